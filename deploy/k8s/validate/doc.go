// Package validate renders the ringattn Kustomize overlays offline and checks
// every object strictly: built-in kinds decode into the k8s.io/api types with
// unknown and duplicate fields rejected, the CRDs (ServiceMonitor,
// ScaledObject) and the prometheus-adapter rule decode into structs of the
// fields their projects document, and cross-object rules that an operator
// would check by hand (selectors that match, secrets and ports that exist,
// raft peers that match the replica count, quorum-keeping disruption
// budgets, network reachability) are enforced by Check.
//
// It is its own Go module (deploy/k8s) so that the product's go.mod does not
// carry kustomize and k8s.io/api. Run it with deploy/k8s/check.sh.
package validate
