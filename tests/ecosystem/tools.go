//go:build tools

// The tools built from other modules, required here so that go.mod pins them.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
