// argocd runs an Argo CD resource health script on objects the way Argo CD's application
// controller does (util/lua): github.com/yuin/gopher-lua, the Lua Argo CD embeds, with only the
// libraries Argo CD opens for a health script (package, base, table, and an os library reduced
// to its clock functions), the object as the global `obj`, a one-second limit, and the returned
// table read as {status, message}, a status outside Argo CD's set being "Unknown". (Argo CD's
// own module cannot be built from the Go module proxy here: its gitops-engine is not served.)
//
// Input on stdin: {"script": "...", "objects": [...]}; output: a JSON array, in order, of
// {"status": ..., "message": ...} or {"error": ...}.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

type input struct {
	Script  string            `json:"script"`
	Objects []json.RawMessage `json:"objects"`
}

type result struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

// The health statuses Argo CD knows.
var statuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

// toLua converts decoded JSON to Lua values: objects and arrays as tables (arrays from 1),
// null as nil.
func toLua(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case map[string]interface{}:
		table := l.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(l, item))
		}
		return table
	case []interface{}:
		table := l.NewTable()
		for _, item := range v {
			table.Append(toLua(l, item))
		}
		return table
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	default:
		return lua.LNil
	}
}

func health(script string, object interface{}) result {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, lua.OpenOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return result{Error: err.Error()}
		}
	}
	// Only the clock of the os library, as Argo CD's "safe" os offers.
	if osTable, ok := l.GetGlobal(lua.OsLibName).(*lua.LTable); ok {
		safe := l.NewTable()
		for _, name := range []string{"clock", "date", "difftime", "time"} {
			safe.RawSetString(name, osTable.RawGetString(name))
		}
		l.SetGlobal(lua.OsLibName, safe)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, object))
	if err := l.DoString(script); err != nil {
		return result{Error: err.Error()}
	}
	returned, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return result{Error: fmt.Sprintf("expect table output from Lua script, not %s", l.Get(-1).Type())}
	}
	status := returned.RawGetString("status").String()
	message := ""
	if m := returned.RawGetString("message"); m != lua.LNil {
		message = m.String()
	}
	if !statuses[status] {
		return result{Status: "Unknown", Message: "Lua returned an invalid health status"}
	}
	return result{Status: status, Message: message}
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "argocd: reading the input:", err)
		os.Exit(2)
	}
	results := make([]result, 0, len(in.Objects))
	for _, raw := range in.Objects {
		var object interface{}
		if err := json.Unmarshal(raw, &object); err != nil {
			fmt.Fprintln(os.Stderr, "argocd: an object:", err)
			os.Exit(2)
		}
		results = append(results, health(in.Script, object))
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintln(os.Stderr, "argocd: writing the results:", err)
		os.Exit(2)
	}
}
