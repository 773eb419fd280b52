// Pins the ginkgo CLI that runs the upstream e2e suite (e2e.test, e2e/tools/kubernetes-e2e) in
// parallel processes on the kind tier: the version that suite is built with (its go.mod).
module sinew.dev/e2e-tools/ginkgo

go 1.26.0

require (
	github.com/Masterminds/semver/v3 v3.4.0 // indirect
	github.com/go-task/slim-sprig/v3 v3.0.0 // indirect
	github.com/google/pprof v0.0.0-20260402051712-545e8a4df936 // indirect
	github.com/onsi/ginkgo/v2 v2.32.0
	golang.org/x/mod v0.35.0 // indirect
	golang.org/x/sync v0.20.0 // indirect
	golang.org/x/tools v0.44.0 // indirect
)
