// Package raftls is a mutual-TLS stream layer for hashicorp/raft: the
// coordinators' Raft traffic (votes, log replication, snapshots) is
// encrypted, and a peer takes part only with a certificate signed by the
// cluster's CA.
//
//   - The listener requires and verifies a client certificate
//     (tls.RequireAndVerifyClientCert against the CA pool) and hands raft a
//     connection only after the handshake succeeded: a peer without a valid
//     certificate never reaches raft's RPC decoder, so it can neither vote
//     nor receive nor send log entries.
//   - The dialer presents its certificate and verifies the server against
//     the same CA, as the peer's host name (from the raft address) or as a
//     configured name (tls.Config.ServerName) that every coordinator's
//     certificate carries. With a configured name the listener also requires
//     it in the client's certificate, so a certificate the same CA issued to
//     something else (a worker, a NATS client) cannot join the Raft cluster.
//   - TLS 1.3 only.
//   - Each inbound handshake runs in its own goroutine under a deadline
//     (Options.HandshakeTimeout), and at most Options.MaxPendingHandshakes
//     run at once; past that, new connections are closed at once. A silent
//     or slow peer cannot hold Accept or a slot for longer than the deadline.
//   - LoadConfig reads the CA, certificate and key from files and re-reads
//     the certificate and key whenever they change on disk, so certificates
//     rotate without a restart (the CA bundle is read once).
package raftls
