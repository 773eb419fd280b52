// Pins upstream cnitool, the libcni command-line caller (libcni is the library containerd
// and CRI-O use to run CNI plugins).
module sinew.dev/e2e-tools/cni

go 1.26.0

require github.com/containernetworking/cni v1.3.0
