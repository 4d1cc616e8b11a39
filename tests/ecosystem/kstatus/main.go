// kstatus reads Kubernetes objects (a JSON array) on stdin and prints, as a JSON array in the
// same order, what kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the code Flux
// and kpt judge readiness with) computes for each: {"status": ..., "message": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	var objects []json.RawMessage
	if err := json.NewDecoder(os.Stdin).Decode(&objects); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: reading the objects:", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(objects))
	for _, raw := range objects {
		// As a client reads it from the API server (integers as int64).
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: an object:", err)
			os.Exit(2)
		}
		computed, err := status.Compute(object)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
		results = append(results, result{Status: computed.Status.String(), Message: computed.Message})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: writing the results:", err)
		os.Exit(2)
	}
}
