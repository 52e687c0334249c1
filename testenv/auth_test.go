package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/ringattn/ringattn/internal/certs"
	"github.com/ringattn/ringattn/internal/localcluster"
	"github.com/ringattn/ringattn/pkg/client"
	"github.com/ringattn/ringattn/pkg/tensor"
	"github.com/ringattn/ringattn/pkg/transport"
	"github.com/ringattn/ringattn/pkg/transport/pb"
)

// authConfig is fastConfig with roles on and tenants victim and mallory.
func authConfig(t *testing.T, workers int) localcluster.Config {
	cfg := fastConfig(t, workers)
	cfg.Auth = true
	cfg.Tenants = []string{"victim", "mallory"}
	return cfg
}

// rawConn is a plain NATS connection as cfg's identity whose
// asynchronous errors (the server's permission violations) arrive on the
// returned channel.
func rawConn(t *testing.T, cfg transport.Config) (*nats.Conn, <-chan error) {
	t.Helper()
	opts, err := cfg.Options(nil)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 64)
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}))
	nc, err := nats.Connect(strings.Join(cfg.URLs, ","), opts...)
	if err != nil {
		t.Fatalf("connecting as %s: %v", cfg.Name, err)
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

// wantViolation waits for the server's permission violation naming
// subject on errs.
func wantViolation(t *testing.T, errs <-chan error, what, subject string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case err := <-errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
				t.Logf("%s refused: %v", what, err)
				return
			}
		case <-deadline:
			t.Errorf("%s on %q: no permission violation from the server within 5s", what, subject)
			return
		}
	}
}

// forge publishes data on subject and wants it refused.
func forge(t *testing.T, nc *nats.Conn, errs <-chan error, what, subject string, msg proto.Message) {
	t.Helper()
	data, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subject, data); err != nil {
		t.Fatalf("%s: publish: %v", what, err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("%s: flush: %v", what, err)
	}
	wantViolation(t, errs, what, subject)
}

// TestSystemAuthTenants runs a cluster with roles on (real NATS server
// with per-identity nkeys and role permissions, coordinators and workers
// each as their own identity). While tenant victim's job runs, a client of
// tenant mallory forges an assignment, a report, a heartbeat, a job event
// and a ring frame, listens to victim's events, gets, lists and cancels
// victim's job, and reads and overwrites victim's tensors: every forgery
// is a permission violation, every API call is NOT_FOUND or leaves the job
// out, and victim's job finishes exact.
func TestSystemAuthTenants(t *testing.T) {
	c := startCluster(t, authConfig(t, 3))
	ctx := testCtx(t)
	subj := c.ClientConfig("victim", "x").Subjects()

	victim, err := client.Connect(ctx, c.ClientConfig("victim", t.Name()+"-victim"), client.Options{RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("victim client: %v", err)
	}
	t.Cleanup(victim.Close)
	mallory, err := client.Connect(ctx, c.ClientConfig("mallory", t.Name()+"-mallory"), client.Options{RequestTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("mallory client: %v", err)
	}
	t.Cleanup(mallory.Close)

	j := newJob(181, 1, 4, 2, 2048, 2048, 64, 256, false)
	p := j.ref
	st, err := victim.SubmitAttention(ctx, tensor.New(j.q, p.B, p.Hq, p.N, p.D), tensor.New(j.k, p.B, p.Hkv, p.Nk, p.D),
		tensor.New(j.v, p.B, p.Hkv, p.Nk, p.D), true, client.JobOptions{Block: j.block})
	if err != nil {
		t.Fatalf("victim submits %v: %v", j, err)
	}
	j.id = st.GetId()
	t.Logf("victim's job %s submitted (%v)", j.id, j)

	// Forgeries on the control plane, as mallory.
	nc, errs := rawConn(t, c.ClientConfig("mallory", t.Name()+"-mallory-raw"))
	forge(t, nc, errs, "forged assignment", subj.Assign("worker-0"),
		&pb.Assignment{JobId: j.id, Epoch: 99})
	forge(t, nc, errs, "forged report", subj.WorkerReport("worker-0"),
		&pb.Report{WorkerId: "worker-0", JobId: j.id, Epoch: 1})
	forge(t, nc, errs, "forged heartbeat", subj.WorkerHeartbeat("worker-1"),
		&pb.Heartbeat{WorkerId: "worker-1"})
	forge(t, nc, errs, "forged legacy report", subj.Report(), &pb.Report{WorkerId: "worker-0", JobId: j.id})
	forge(t, nc, errs, "forged job event", subj.TenantJobEvents("victim", j.id),
		&pb.JobEvent{JobId: j.id, Type: pb.JobEventType_JOB_EVENT_TYPE_FINISHED, State: pb.JobState_JOB_STATE_FAILED})
	forge(t, nc, errs, "forged ring frame", subj.RingFrom("worker-0", j.id, 1, 1), &pb.JobEvent{JobId: j.id})
	forge(t, nc, errs, "forged ring frame (as mallory)", subj.RingFrom("mallory", j.id, 1, 1), &pb.JobEvent{JobId: j.id})
	// Listening to victim's events is refused too.
	events := subj.TenantJobEvents("victim", j.id)
	if _, err := nc.Subscribe(events, func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errs, "subscribing to victim's job events", events)

	// The API, as mallory: victim's job does not exist for her.
	if got, err := mallory.Get(ctx, j.id); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("mallory gets victim's job %s: %v, %v; want NOT_FOUND", j.id, got.GetState(), err)
	}
	if got, err := mallory.Cancel(ctx, j.id, "mallory was here"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("mallory cancels victim's job %s: %v, %v; want NOT_FOUND", j.id, got.GetState(), err)
	}
	list, err := mallory.List(ctx, 0)
	if err != nil {
		t.Errorf("mallory lists her jobs: %v", err)
	}
	for _, s := range list {
		if s.GetId() == j.id {
			t.Errorf("mallory's list holds victim's job %s", j.id)
		}
	}
	// The admin sees it.
	adminList, err := c.Client().List(ctx, 0)
	if err != nil {
		t.Fatalf("admin lists: %v", err)
	}
	if !slices.ContainsFunc(adminList, func(s *pb.JobStatus) bool { return s.GetId() == j.id }) {
		t.Errorf("the admin's list (%d jobs) lacks victim's job %s", len(adminList), j.id)
	}

	// Victim's tensors: mallory may not bind victim's bucket, nor read or
	// write its objects on the raw subjects.
	vb := transport.TenantBucket(transport.DefaultConfig().Bucket, "victim")
	mnc, err := transport.Connect(c.ClientConfig("mallory", t.Name()+"-mallory-store"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mnc.Close)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if _, err := transport.OpenStore(sctx, mnc, transport.StoreConfig{Bucket: vb}, nil); !errors.Is(err, transport.ErrPermission) {
		t.Errorf("mallory opens victim's bucket %s: %v; want a permission error", vb, err)
	} else {
		t.Logf("mallory opening victim's bucket refused: %v", err)
	}
	cancel()
	objects := transport.Bucket(vb)
	overwrite := strings.TrimSuffix(objects.Data[0], ">") + "C.overwritten"
	if err := nc.Publish(overwrite, []byte("mallory's bytes")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	wantViolation(t, errs, "overwriting a chunk of victim's tensors", overwrite)
	read := "$JS.API.STREAM.MSG.GET." + objects.Streams[0]
	if _, err := nc.Request(read, []byte(`{"seq":1}`), time.Second); err == nil {
		t.Errorf("mallory read a message of victim's bucket on %s", read)
	}
	wantViolation(t, errs, "reading victim's tensors", read)

	// Victim's job, untouched, finishes exact.
	fin, err := victim.Wait(ctx, j.id)
	if err != nil {
		t.Fatalf("victim waits for %s: %v", j.id, err)
	}
	if fin.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("victim's job %s ended %v (%s): want SUCCEEDED", j.id, fin.GetState(), fin.GetReason())
	}
	res, err := victim.FetchAttention(ctx, fin)
	if err != nil {
		t.Fatalf("victim fetches %s: %v", j.id, err)
	}
	if err := j.check(res); err != nil {
		t.Error(err)
	}
	// And it is still nobody else's.
	if _, err := mallory.Get(ctx, j.id); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("mallory gets victim's finished job %s: %v; want NOT_FOUND", j.id, err)
	}
	if _, err := mallory.FetchAttention(ctx, fin); err == nil {
		t.Errorf("mallory fetched victim's outputs of %s", j.id)
	}
}

// TestSystemAuthWorkerImpersonation: a worker (its own credentials)
// reporting or heartbeating as another worker is refused by the NATS
// server, and one naming another worker in the body of its own subject is
// rejected by the coordinator.
func TestSystemAuthWorkerImpersonation(t *testing.T) {
	c := startCluster(t, authConfig(t, 2))
	ctx := testCtx(t)
	cfg := c.WorkerConfig("worker-0", t.Name()+"-worker-0")
	nc, err := transport.Connect(cfg, nil)
	if err != nil {
		t.Fatalf("connecting as worker-0: %v", err)
	}
	t.Cleanup(nc.Close)
	conn := transport.NewConn(nc, cfg.Subjects(), nil)
	subj := cfg.Subjects()

	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = conn.SendHeartbeat(rctx, &pb.Heartbeat{WorkerId: "worker-1"})
	cancel()
	if err == nil {
		t.Errorf("worker-0 heartbeating as worker-1 was answered")
	}
	if err := conn.Denied(subj.WorkerHeartbeat("worker-1")); !errors.Is(err, transport.ErrPermission) {
		t.Errorf("worker-0 heartbeating as worker-1: %v (last server error %v); want a permission violation", err, nc.LastError())
	}
	rctx, cancel = context.WithTimeout(ctx, 2*time.Second)
	_, err = conn.Report(rctx, &pb.Report{WorkerId: "worker-1", JobId: "j-0000000000000000", Epoch: 1})
	cancel()
	if err == nil {
		t.Errorf("worker-0 reporting as worker-1 was answered")
	}
	if err := conn.Denied(subj.WorkerReport("worker-1")); !errors.Is(err, transport.ErrPermission) {
		t.Errorf("worker-0 reporting as worker-1: %v (last server error %v); want a permission violation", err, nc.LastError())
	}

	// On its own subject, naming worker-1 in the body: the coordinator
	// rejects it.
	data, err := proto.Marshal(&pb.Report{WorkerId: "worker-1", JobId: "j-0000000000000000", Epoch: 1})
	if err != nil {
		t.Fatal(err)
	}
	m, err := nc.RequestWithContext(ctx, subj.WorkerReport("worker-0"), data)
	if err != nil {
		t.Fatalf("worker-0's report on its own subject: %v", err)
	}
	var ack pb.ReportAck
	if err := proto.Unmarshal(m.Data, &ack); err != nil {
		t.Fatal(err)
	}
	if ack.GetStatus() != pb.ReportStatus_REPORT_STATUS_REJECTED {
		t.Errorf("report naming worker-1 on worker-0's subject: %v %q; want REJECTED", ack.GetStatus(), ack.GetMessage())
	}
	// worker-1 is still live, its standing untouched.
	if err := c.WaitWorkers(ctx, "worker-0", "worker-1"); err != nil {
		t.Error(err)
	}
}

// raftDial opens a TLS connection to a coordinator's Raft port with cert
// (none when nil) and returns the error of the first read: a timeout when
// the coordinator accepted the peer (Raft waits for an RPC), the TLS alert
// when it refused it.
func raftDial(addr string, pool *x509.CertPool, cert *tls.Certificate) error {
	cfg := &tls.Config{RootCAs: pool, ServerName: localcluster.RaftServerName, MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Sent whatever CAs the server names as acceptable (Certificates
		// would send none that does not match them).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestSystemAuthRaftMTLS: with roles on, the three coordinators elect a
// leader and serve over Raft mutual TLS: their Raft ports accept a peer
// with a certificate of the cluster's CA and refuse one without a
// certificate or with one of another CA. A coordinator process whose
// certificate comes from another CA, started as a fourth member of the
// cluster, never becomes a voter or leader, and the cluster keeps running
// jobs exactly.
func TestSystemAuthRaftMTLS(t *testing.T) {
	c := startCluster(t, authConfig(t, 2))
	ctx := testCtx(t)
	rt := c.RaftTLS()
	if rt == nil {
		t.Fatal("cluster with Auth has no Raft TLS files")
	}
	ca, err := certs.LoadCA(rt.CA, rt.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	good, err := tls.LoadX509KeyPair(rt.Cert["coordinator-0"], rt.Key["coordinator-0"])
	if err != nil {
		t.Fatal(err)
	}
	other, err := certs.NewCA(certs.Request{CommonName: "not the cluster's CA"})
	if err != nil {
		t.Fatal(err)
	}
	rogueLeaf, err := localcluster.IssueRaftCert(other, "coordinator-3")
	if err != nil {
		t.Fatal(err)
	}
	rogueCert, err := rogueLeaf.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range c.Coordinators {
		if err := raftDial(p.RaftAddr, ca.Pool(), &good); !isTimeout(err) {
			t.Errorf("%s's Raft port with a certificate of the cluster's CA: %v; want accepted (read timeout)", p.Name, err)
		}
		if err := raftDial(p.RaftAddr, ca.Pool(), nil); err == nil || isTimeout(err) {
			t.Errorf("%s's Raft port without a client certificate: %v; want refused", p.Name, err)
		} else {
			t.Logf("%s refuses a peer without a certificate: %v", p.Name, err)
		}
		if err := raftDial(p.RaftAddr, ca.Pool(), &rogueCert); err == nil || isTimeout(err) {
			t.Errorf("%s's Raft port with a certificate of another CA: %v; want refused", p.Name, err)
		} else {
			t.Logf("%s refuses a peer with another CA's certificate: %v", p.Name, err)
		}
		// Plain TCP gets nowhere either: not speaking TLS, the handshake fails.
		if err := raftDial(p.RaftAddr, other.Pool(), &good); err == nil || isTimeout(err) {
			t.Errorf("%s's Raft port verified against another CA: %v; want a failed handshake", p.Name, err)
		}
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, err := c.ClusterInfo(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %s in term %d over Raft mTLS, peers %v", leader.Name, before.GetTerm(), before.GetPeers())

	// The rogue coordinator: its own NATS server (it must not answer the
	// cluster's API), the cluster's peers plus itself, a certificate of
	// another CA.
	ns, err := transport.StartEmbedded(transport.EmbeddedConfig{Port: -1, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "rogue.pem"), filepath.Join(dir, "rogue-key.pem"), filepath.Join(dir, "ca.pem")
	if err := rogueLeaf.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	if err := other.WriteFiles(caFile, ""); err != nil {
		t.Fatal(err)
	}
	raftLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	raftAddr, httpAddr := raftLn.Addr().String(), httpLn.Addr().String()
	raftLn.Close()
	httpLn.Close()
	var peers []string
	for _, p := range c.Coordinators {
		peers = append(peers, p.Name+"="+p.RaftAddr)
	}
	peers = append(peers, "coordinator-3="+raftAddr)
	logPath := filepath.Join(c.Dir, "logs", "rogue-coordinator.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(c.Coordinators[0].Binary(), "--node-id", "coordinator-3", "--raft-addr", raftAddr,
		"--data-dir", filepath.Join(dir, "data"), "--http-addr", httpAddr, "--nats-url", ns.ClientURL(),
		"--nats-name", "rogue", "--log-level", "info", "--peers", strings.Join(peers, ","),
		"--raft-heartbeat-timeout", "300ms", "--raft-election-timeout", "300ms", "--raft-leader-lease-timeout", "150ms",
		"--raft-tls-ca", caFile, "--raft-tls-cert", certFile, "--raft-tls-key", keyFile,
		"--raft-tls-server-name", localcluster.RaftServerName)
	cmd.Env = localcluster.ChildEnv(nil)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	rogue := &localcluster.Proc{Name: "coordinator-3", Addr: httpAddr}
	// It serves its ops endpoint once its Raft is up.
	if err := localcluster.Poll(ctx, 50*time.Millisecond, func() error {
		select {
		case err := <-exited:
			return localcluster.Permanent(fmt.Errorf("the rogue coordinator exited: %v", err))
		default:
		}
		_, err := c.ClusterInfo(ctx, rogue)
		return err
	}, "the rogue coordinator's ops endpoint"); err != nil {
		tail, _ := localcluster.ReadTail(logPath, 4<<10)
		t.Fatalf("%v\n%s", err, tail)
	}
	// Many election timeouts later: it has no leader and is nobody's peer.
	time.Sleep(5 * time.Second)
	ri, err := c.ClusterInfo(ctx, rogue)
	if err != nil {
		t.Fatal(err)
	}
	if ri.GetLeaderId() != "" {
		t.Errorf("the rogue coordinator knows leader %q: want none", ri.GetLeaderId())
	}
	t.Logf("the rogue coordinator after 5s: leader %q, term %d", ri.GetLeaderId(), ri.GetTerm())
	for _, p := range c.Coordinators {
		info, err := c.ClusterInfo(ctx, p)
		if err != nil {
			t.Errorf("%s: %v", p.Name, err)
			continue
		}
		if info.GetLeaderId() == "coordinator-3" || info.GetLeaderId() == "" {
			t.Errorf("%s: leader %q: want one of the three coordinators", p.Name, info.GetLeaderId())
		}
		for _, peer := range info.GetPeers() {
			if peer.GetId() == "coordinator-3" {
				t.Errorf("%s lists the rogue coordinator as a peer: %v", p.Name, peer)
			}
		}
	}
	tail, _ := localcluster.ReadTail(logPath, 2<<10)
	if !strings.Contains(tail, "tls") && !strings.Contains(tail, "certificate") {
		t.Errorf("the rogue coordinator's log shows no TLS refusal:\n%s", tail)
	}

	// The cluster keeps working.
	l := newLedger(t, c)
	l.submit(ctx, newJob(182, 1, 2, 1, 512, 512, 32, 128, true))
	l.verify(ctx)
}
