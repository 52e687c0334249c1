package validate

import (
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// StoreReplicasEnv sets the tensor store bucket's replicas on the pods
// that may create it (the coordinator and the workers).
const StoreReplicasEnv = "RINGATTN_STORE_REPLICAS"

// storeReplicas returns the store replicas a container asks for: its
// --store-replicas flag, else its RINGATTN_STORE_REPLICAS literal, else 1.
func storeReplicas(c *corev1.Container) (int, string, error) {
	if v, ok := Args(c)["store-replicas"]; ok {
		n, err := strconv.Atoi(v)
		return n, "--store-replicas", err
	}
	for _, e := range c.Env {
		if e.Name == StoreReplicasEnv {
			if e.ValueFrom != nil {
				return 0, "env " + StoreReplicasEnv, fmt.Errorf("want a literal value")
			}
			n, err := strconv.Atoi(e.Value)
			return n, "env " + StoreReplicasEnv, err
		}
	}
	return 1, "env " + StoreReplicasEnv + " (unset)", nil
}

// checkStoreReplicas: the tensor store bucket's replicas fit the NATS
// servers, and a NATS cluster of three or more servers keeps three copies
// of the tensors (with one, a job's inputs and outputs are lost with the
// server holding them). Both the coordinator and the workers ask for the
// same count: whichever opens the store first creates the bucket.
func checkStoreReplicas(inv *Inventory, add addFunc) {
	n, ok := inv.BinaryWorkload("nats-server")
	if !ok || n.Replicas == nil {
		return
	}
	servers := int(*n.Replicas)
	for _, bin := range []string{"ringattn-coordinator", "ringattn-worker"} {
		w, ok := inv.BinaryWorkload(bin)
		if !ok {
			continue
		}
		r, src, err := storeReplicas(&w.Template.Spec.Containers[0])
		switch {
		case err != nil || r < 1 || r > 5:
			add(w.Obj, "%s = %d (%v): want an integer 1..5", src, r, err)
		case r > servers:
			add(w.Obj, "%s = %d: want <= the NATS servers (%d)", src, r, servers)
		case servers >= 3 && r < 3:
			add(w.Obj, "%s = %d with %d NATS servers: want 3 (one copy is lost with its server)", src, r, servers)
		}
	}
}
