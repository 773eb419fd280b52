// Pins the upstream etcd release the test control plane runs (the one Kubernetes v1.37 uses).
module sinew.dev/e2e-tools/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 v3.7.0
