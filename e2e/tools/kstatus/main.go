// Command kstatus prints the kstatus status (sigs.k8s.io/cli-utils/pkg/kstatus/status) of the
// object in each gitops/testdata fixture, one line per file:
//
//	<file>\t<status>\t<message>
//
// A fixture is a JSON document {"object": {...a full custom resource...}, ...}; only "object"
// is read. Exits 2 on an unreadable fixture or a failed computation.
//
// usage: kstatus <fixture.json>...
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type fixture struct {
	Object json.RawMessage `json:"object"`
}

func compute(path string) (*status.Result, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f fixture
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	if len(f.Object) == 0 {
		return nil, fmt.Errorf("%s: no \"object\"", path)
	}
	// The unstructured decoder, unlike encoding/json into interface{}, keeps whole numbers
	// as int64, which kstatus needs to read metadata.generation and status.observedGeneration.
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(f.Object); err != nil {
		return nil, fmt.Errorf("decoding the object of %s: %w", path, err)
	}
	return status.Compute(u)
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kstatus <fixture.json>...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		res, err := compute(path)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
			failed = true
			continue
		}
		fmt.Printf("%s\t%s\t%s\n", path, res.Status, res.Message)
	}
	if failed {
		os.Exit(2)
	}
}
