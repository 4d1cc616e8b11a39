// flux reads a Kustomization's health check expressions for one kind and objects of that kind
// ({"current": ..., "failed": ..., "inProgress": ..., "objects": [...]}) on stdin, and prints, as
// a JSON array in the objects' order, the status kustomize-controller's own evaluator
// (github.com/fluxcd/pkg/runtime/cel.StatusEvaluator, RFC 0009) gives each: Current, Failed or
// InProgress, or the error it stops with.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/fluxcd/pkg/apis/kustomize"
	"github.com/fluxcd/pkg/runtime/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

type input struct {
	Current    string            `json:"current"`
	Failed     string            `json:"failed"`
	InProgress string            `json:"inProgress"`
	Objects    []json.RawMessage `json:"objects"`
}

type result struct {
	Status string `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "flux: reading the input:", err)
		os.Exit(2)
	}
	evaluator, err := cel.NewStatusEvaluator(&kustomize.HealthCheckExpressions{
		Current:    in.Current,
		Failed:     in.Failed,
		InProgress: in.InProgress,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "flux: the expressions:", err)
		os.Exit(1)
	}
	results := make([]result, 0, len(in.Objects))
	for _, raw := range in.Objects {
		object := &unstructured.Unstructured{}
		if err := object.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "flux: an object:", err)
			os.Exit(2)
		}
		computed, err := evaluator.Evaluate(context.Background(), object)
		if err != nil {
			results = append(results, result{Error: err.Error()})
			continue
		}
		results = append(results, result{Status: computed.Status.String()})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "flux: writing the results:", err)
		os.Exit(2)
	}
}
