// promql reads PromQL expressions (a JSON array of strings) on stdin and prints, as a JSON
// array in the same order, what Prometheus's own parser
// (github.com/prometheus/prometheus/promql/parser) finds in each: its error, or its vector
// selectors (metric name and label matchers) and the labels it groups or matches by.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/promql/parser"
)

type matcher struct {
	Label string `json:"label"`
	Op    string `json:"op"`
	Value string `json:"value"`
}

type selector struct {
	Metric   string    `json:"metric"`
	Matchers []matcher `json:"matchers"`
}

type parsed struct {
	Error     string     `json:"error,omitempty"`
	Selectors []selector `json:"selectors"`
	Grouping  []string   `json:"grouping"`
}

func main() {
	var expressions []string
	if err := json.NewDecoder(os.Stdin).Decode(&expressions); err != nil {
		fmt.Fprintln(os.Stderr, "promql: reading the expressions:", err)
		os.Exit(2)
	}
	results := make([]parsed, 0, len(expressions))
	for _, text := range expressions {
		result := parsed{Selectors: []selector{}, Grouping: []string{}}
		expr, err := parser.NewParser(parser.Options{}).ParseExpr(text)
		if err != nil {
			result.Error = err.Error()
			results = append(results, result)
			continue
		}
		parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
			switch n := node.(type) {
			case *parser.VectorSelector:
				found := selector{Metric: n.Name, Matchers: []matcher{}}
				for _, m := range n.LabelMatchers {
					if m.Name == "__name__" {
						continue
					}
					found.Matchers = append(found.Matchers, matcher{Label: m.Name, Op: m.Type.String(), Value: m.Value})
				}
				result.Selectors = append(result.Selectors, found)
			case *parser.AggregateExpr:
				result.Grouping = append(result.Grouping, n.Grouping...)
			case *parser.BinaryExpr:
				if n.VectorMatching != nil {
					result.Grouping = append(result.Grouping, n.VectorMatching.MatchingLabels...)
					result.Grouping = append(result.Grouping, n.VectorMatching.Include...)
				}
			}
			return nil
		})
		results = append(results, result)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "promql: writing the results:", err)
		os.Exit(2)
	}
}
