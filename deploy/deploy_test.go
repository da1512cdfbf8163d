// Package deploy holds the deployment files of mlsds (compose.yaml,
// Caddyfile, mlsds.service, grafana-dashboard.json; the Dockerfile is at
// the root of the repository). Its tests check them without Docker or
// systemd: they parse, name what they should, and the dashboard asks only
// for series the server registers.
package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/mlsds/mlsds/ds"
	"github.com/mlsds/mlsds/ds/store/sqlite"
	"github.com/mlsds/mlsds/server"
)

// compose is the part of a Compose file the tests read.
type compose struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
		Volumes     []string          `yaml:"volumes"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func TestCompose(t *testing.T) {
	data, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("compose.yaml does not parse: %v", err)
	}
	for _, name := range []string{"postgres", "auth-secret", "mlsds1", "mlsds2", "proxy"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("no service %q", name)
		}
	}
	if img := c.Services["postgres"].Image; !strings.HasPrefix(img, "postgres:") {
		t.Errorf("postgres image %q", img)
	}
	if img := c.Services["proxy"].Image; !strings.HasPrefix(img, "caddy:") {
		t.Errorf("proxy image %q", img)
	}
	if ports := c.Services["proxy"].Ports; !slices.Contains(ports, "7400:7400") {
		t.Errorf("the proxy does not publish port 7400: %v", ports)
	}
	if !slices.Contains(c.Services["proxy"].Volumes, "./Caddyfile:/etc/caddy/Caddyfile:ro") {
		t.Errorf("the proxy does not mount ./Caddyfile: %v", c.Services["proxy"].Volumes)
	}

	// Both nodes: built from the Dockerfile, serving on 7400 with their
	// data in /data, on the same database and the same secret.
	var stores, secrets []string
	for _, name := range []string{"mlsds1", "mlsds2"} {
		s := c.Services[name]
		if s.Build == nil {
			t.Fatalf("%s has no build", name)
		}
		if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
			t.Errorf("%s builds from a Dockerfile that is not there: %v", name, err)
		}
		if cmd := strings.Join(s.Command, " "); cmd != "serve --listen 0.0.0.0:7400 --data-dir /data" {
			t.Errorf("%s command %q", name, cmd)
		}
		env := s.Environment
		if !strings.HasPrefix(env["MLSDS_STORE"], "postgres://") || !strings.Contains(env["MLSDS_STORE"], "@postgres:5432/") {
			t.Errorf("%s MLSDS_STORE %q is not the compose PostgreSQL", name, env["MLSDS_STORE"])
		}
		stores = append(stores, env["MLSDS_STORE"])
		secrets = append(secrets, env["MLSDS_AUTH_SECRET_FILE"])
		if !slices.ContainsFunc(s.Volumes, func(v string) bool { return strings.HasSuffix(v, ":/data") }) {
			t.Errorf("%s keeps no volume at /data: %v", name, s.Volumes)
		}
		if !slices.Contains(s.Volumes, "secrets:/run/mlsds:ro") || env["MLSDS_AUTH_SECRET_FILE"] != "/run/mlsds/auth.key" {
			t.Errorf("%s does not read the shared secret: %v %q", name, s.Volumes, env["MLSDS_AUTH_SECRET_FILE"])
		}
		if s.DependsOn["postgres"].Condition != "service_healthy" || s.DependsOn["auth-secret"].Condition != "service_completed_successfully" {
			t.Errorf("%s depends_on %+v", name, s.DependsOn)
		}
		// Every MLSDS_ variable is the twin of a flag of mlsds serve: a
		// misspelt one would be ignored.
		for k := range env {
			flag := "--" + strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k, "MLSDS_")), "_", "-")
			if !strings.HasPrefix(k, "MLSDS_") || !slices.Contains(serveFlags(t), flag) {
				t.Errorf("%s: %s is not the twin of a flag of mlsds serve", name, k)
			}
		}
	}
	if stores[0] != stores[1] || secrets[0] != secrets[1] {
		t.Errorf("the nodes do not share the store and secret: %q %q", stores, secrets)
	}

	// Every named volume a service mounts is declared.
	for name, s := range c.Services {
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				continue
			}
			if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s mounts volume %q, which is not declared", name, src)
			}
		}
	}

	caddy, err := os.ReadFile("Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"reverse_proxy mlsds1:7400 mlsds2:7400", "versions h2c 2", "protocols h1 h2 h2c", "health_uri /healthz", "flush_interval -1"} {
		if !strings.Contains(string(caddy), want) {
			t.Errorf("Caddyfile lacks %q", want)
		}
	}
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var from []string
	var user, volume, health, cmd string
	var static bool
	for _, line := range dockerLines(string(data)) {
		instr, rest, _ := strings.Cut(line, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			from = append(from, rest)
		case "USER":
			user = rest
		case "VOLUME":
			volume = rest
		case "HEALTHCHECK":
			health = rest
		case "CMD":
			cmd = rest
		case "RUN":
			if strings.Contains(rest, "CGO_ENABLED=0") && strings.Contains(rest, "go build") {
				static = true
			}
		}
	}
	if len(from) < 2 {
		t.Errorf("not a multi-stage build: FROM %q", from)
	}
	if !static {
		t.Error("the binary is not built with CGO_ENABLED=0")
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "0" || u == "root" {
		t.Errorf("the image runs as %q, not as an unprivileged user", user)
	}
	if !strings.Contains(volume, "/data") {
		t.Errorf("VOLUME %q is not /data", volume)
	}
	if !strings.Contains(health, "/healthz") {
		t.Errorf("HEALTHCHECK %q does not ask /healthz", health)
	}
	var args []string
	if err := json.Unmarshal([]byte(cmd), &args); err != nil || strings.Join(args, " ") != "serve --listen 0.0.0.0:7400 --data-dir /data" {
		t.Errorf("CMD %q (%v)", cmd, err)
	}
}

// dockerLines returns the instructions of a Dockerfile, continuation
// lines joined and comments dropped.
func dockerLines(s string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(s, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "#") || t == "" && cur.Len() == 0 {
			continue
		}
		if more, ok := strings.CutSuffix(t, "\\"); ok {
			cur.WriteString(more + " ")
			continue
		}
		cur.WriteString(t)
		out = append(out, strings.Join(strings.Fields(cur.String()), " "))
		cur.Reset()
	}
	return out
}

// unit is a systemd unit file: section -> key -> values, in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, r io.Reader) unit {
	u := unit{}
	section := ""
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] != nil {
				t.Errorf("line %d: section [%s] twice", n, section)
			}
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.TrimSpace(k) == "" || strings.HasSuffix(line, "\\") {
				t.Fatalf("line %d is not key=value in a section: %q", n, line)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u
}

func TestSystemdUnit(t *testing.T) {
	f, err := os.Open("mlsds.service")
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, f)
	f.Close()
	for _, s := range []string{"Unit", "Service", "Install"} {
		if u[s] == nil {
			t.Errorf("no [%s] section", s)
		}
	}
	svc := u["Service"]
	start := svc["ExecStart"]
	if len(start) != 1 || !strings.Contains(start[0], "mlsds serve") || !strings.Contains(start[0], "--data-dir ${STATE_DIRECTORY}") {
		t.Errorf("ExecStart %q", start)
	}
	for key, want := range map[string]string{
		"DynamicUser": "yes", "StateDirectory": "mlsds", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
		"SystemCallFilter": "@system-service", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
		"PrivateDevices": "yes", "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
	} {
		if !slices.Contains(svc[key], want) {
			t.Errorf("[Service] %s=%s missing (have %q)", key, want, svc[key])
		}
	}
	if fams := strings.Fields(strings.Join(svc["RestrictAddressFamilies"], " ")); !slices.Contains(fams, "AF_INET") || !slices.Contains(fams, "AF_INET6") || len(fams) > 3 {
		t.Errorf("RestrictAddressFamilies %q", fams)
	}
	if got := u["Install"]["WantedBy"]; !slices.Contains(got, "multi-user.target") {
		t.Errorf("WantedBy %q", got)
	}

	// systemd's own checks, where systemd is installed.
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: skipping its verify")
		return
	}
	// verify wants ExecStart to exist: point it at an executable that does.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile("mlsds.service")
	dir := t.TempDir()
	path := filepath.Join(dir, "mlsds.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/mlsds", self)), 0o644)
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	// verify reports unknown keys and bad values as warnings naming the
	// file, with exit status 0.
	if err != nil || strings.Contains(string(out), "mlsds.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err = exec.Command(analyze, "security", "--offline=yes", path).CombinedOutput()
	if err != nil {
		t.Logf("systemd-analyze security --offline not available: %v", err)
		return
	}
	m := regexp.MustCompile(`Overall exposure level for mlsds.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security said no exposure level:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
		t.Errorf("systemd-analyze security: exposure %.1f, want at most 2.0 (OK)\n%s", level, out)
	}
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	Title  string  `json:"title"`
	UID    string  `json:"uid"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID      int    `json:"id"`
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

var metricName = regexp.MustCompile(`\bmlsds_[a-zA-Z0-9_]+`)

func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("grafana-dashboard.json is not JSON: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard without title, uid or panels: %q %q %d", d.Title, d.UID, len(d.Panels))
	}
	reg := serverRegistry(t)
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			names := metricName.FindAllString(q.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no mlsds_* series", p.Title, q.Expr)
			}
			for _, n := range names {
				used[n] = true
				if !registered(reg, n) {
					t.Errorf("panel %q: %s is not a series the server registers", p.Title, n)
				}
			}
		}
	}
	// The panels the operators asked for.
	for _, n := range []string{"mlsds_requests_total", "mlsds_messages_accepted_total", "mlsds_commit_conflicts_total",
		"mlsds_request_duration_seconds_bucket", "mlsds_streaming_clients", "mlsds_key_package_stock", "mlsds_auth_failures_total"} {
		if !used[n] {
			t.Errorf("no panel shows %s", n)
		}
	}
}

// serverRegistry returns the metrics registry of a server as `mlsds serve`
// makes it, on a throwaway SQLite store.
func serverRegistry(t *testing.T) *prometheus.Registry {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "mlsds.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	m := server.NewMetrics()
	if _, err := server.New(ds.New(m.InstrumentStore(st), ds.Config{}), server.Config{
		Metrics: m, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}); err != nil {
		t.Fatal(err)
	}
	return m.Registry
}

// registered reports whether reg has a series called name (a histogram's
// _bucket, _sum and _count by its own name). A vector without children
// gathers nothing, so ask the registry instead: registering another
// collector under a name it already has fails.
func registered(reg *prometheus.Registry, name string) bool {
	families, _ := reg.Gather()
	for _, f := range families {
		if f.GetName() == name {
			return true
		}
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && registered(reg, base) {
			return true
		}
	}
	probe := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "probe of the deploy tests"})
	if err := reg.Register(probe); err != nil {
		return true
	}
	reg.Unregister(probe)
	return false
}

var serveFlagList []string

// serveFlags returns the flags of `mlsds serve`, from its -h.
func serveFlags(t *testing.T) []string {
	t.Helper()
	if serveFlagList != nil {
		return serveFlagList
	}
	cmd := exec.Command("go", "run", "../cmd/mlsds", "serve", "-h")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mlsds serve -h: %v\n%s", err, out)
	}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		serveFlagList = append(serveFlagList, "--"+m[1])
	}
	if len(serveFlagList) < 10 {
		t.Fatalf("mlsds serve -h lists %d flags:\n%s", len(serveFlagList), out)
	}
	return serveFlagList
}
