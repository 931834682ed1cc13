// Package vaulttest runs real Vault server and Vault Agent processes with the
// BioT plugin, for the end-to-end tests under test/ and the benchmarks built
// on them.
//
// A test binary builds an Env once, in TestMain:
//
//	var env *vaulttest.Env
//	func TestMain(m *testing.M) { os.Exit(vaulttest.Main(m, &env)) }
//
// which finds a Vault binary (VAULT_BIN, else scripts/vault.sh, which builds
// the pinned Vault on first use) and builds the plugin, with Version set to
// PLUGIN_VERSION (default v0.1.0), into a private plugin directory. Each test
// then starts the Vault servers it needs, with BioT played by an in-process
// biotfake.Server:
//
//	fake := biotfake.NewTLSServer(biotfake.Options{})
//	v := env.StartDev(t)            // dev server, plugin_directory set, nothing registered
//	v.Register(t)                   // catalog entry with sha256 and version
//	v.Enable(t, "biot")             // mount with that plugin version
//	v.WriteConfig(t, "biot", vaulttest.UserConfig(fake))
//	s := v.ReadCreds(t, "biot")
//
// (env.StartDevWithPlugin(t, "biot") does the first three), or
// env.StartServer(t) for a server with file storage that the test
// initialises (Init), unseals (Unseal), stops and starts again (Restart).
// v.Client is a root API client, v.CLI runs the vault CLI against the server
// and v.StartAgent runs Vault Agent against it.
//
// Every process runs in its own process group, is stopped at test cleanup
// (and gets SIGTERM if the test binary dies), and when a test fails the tail
// of its log is printed. A Vault log that shows a panic or a data race fails
// the test. With BIOT_E2E_RACE=1 the plugin is built with the race detector
// and Vault logs at debug level, so races in the plugin fail the tests.
package vaulttest

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	// ModulePath is the plugin's Go module.
	ModulePath = "github.com/biot-med/vault-plugin-secrets-biot"
	// PluginName is the name the plugin is registered and enabled under.
	PluginName = "vault-plugin-secrets-biot"
	// DefaultPluginVersion is the version built when PLUGIN_VERSION is unset;
	// it matches the Makefile's VERSION.
	DefaultPluginVersion = "v0.1.0"
)

// HowToGetVault explains how to provide a Vault binary; part of the error
// when none can be had.
const HowToGetVault = `the end-to-end tests need a Vault server binary: run "make vault" (builds the
pinned Vault into .cache/vault once, about 10-15 minutes) or set VAULT_BIN to a
Vault v1.21 binary; "make test" does this for you`

// PluginVersion is the version to build and register the plugin with:
// $PLUGIN_VERSION, or DefaultPluginVersion.
func PluginVersion() string {
	if v := os.Getenv("PLUGIN_VERSION"); v != "" {
		return v
	}
	return DefaultPluginVersion
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// RepoRoot is the directory of the plugin module's go.mod, found by walking
// up from the working directory.
func RepoRoot() (string, error) {
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = err
			return
		}
		for {
			b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
			if err == nil && modulePathOf(b) == ModulePath {
				rootDir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootErr = fmt.Errorf("vaulttest: no go.mod for %s above the working directory", ModulePath)
				return
			}
			dir = parent
		}
	})
	return rootDir, rootErr
}

func modulePathOf(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

var (
	vaultOnce sync.Once
	vaultBin  string
	vaultErr  error
)

// VaultBinary returns the path of a Vault server binary: $VAULT_BIN if set,
// else what scripts/vault.sh prints (it builds the pinned Vault on first use,
// which takes minutes; its progress goes to stderr). The answer is cached.
func VaultBinary() (string, error) {
	vaultOnce.Do(func() {
		if bin := os.Getenv("VAULT_BIN"); bin != "" {
			if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
				vaultErr = fmt.Errorf("VAULT_BIN=%s is not an executable file\n%s", bin, HowToGetVault)
				return
			}
			vaultBin, vaultErr = filepath.Abs(bin)
			return
		}
		root, err := RepoRoot()
		if err != nil {
			vaultErr = err
			return
		}
		script := filepath.Join(root, "scripts", "vault.sh")
		cmd := exec.Command(script)
		cmd.Dir = root
		cmd.Stderr = os.Stderr // build progress
		slow := time.AfterFunc(5*time.Second, func() {
			fmt.Fprintln(os.Stderr, "vaulttest: waiting for scripts/vault.sh; if it is building Vault and go test kills this binary"+
				" for running too long, run \"make vault\" once first, or use go test -timeout 30m")
		})
		out, err := cmd.Output()
		slow.Stop()
		if err != nil {
			vaultErr = fmt.Errorf("%s failed: %v\n%s", script, err, HowToGetVault)
			return
		}
		bin := strings.TrimSpace(string(out))
		if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
			vaultErr = fmt.Errorf("%s printed %q, which is not an executable file\n%s", script, bin, HowToGetVault)
			return
		}
		vaultBin = bin
	})
	return vaultBin, vaultErr
}

// Plugin is a built plugin binary in a directory that holds nothing else,
// ready to be a Vault plugin_directory.
type Plugin struct {
	Dir     string // the plugin directory
	Path    string // Dir/Name
	Name    string // PluginName
	Command string // the catalog command: the file name in Dir
	SHA256  string // hex
	Version string // the version compiled in, e.g. v0.1.0
}

// BuildPlugin builds cmd/vault-plugin-secrets-biot into dir with Version set
// to version, as "make build" does. With BIOT_E2E_RACE=1 the plugin is built
// with the race detector (slower, but catches races under a real Vault).
func BuildPlugin(dir, version string) (*Plugin, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	out := filepath.Join(dir, PluginName)
	args := []string{"build", "-trimpath", "-ldflags", "-X " + ModulePath + ".Version=" + version, "-o", out}
	if raceMode() {
		args = append(args, "-race")
	}
	args = append(args, "./cmd/"+PluginName)
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("building the plugin (go %s): %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	sum, err := fileSHA256(out)
	if err != nil {
		return nil, err
	}
	return &Plugin{Dir: dir, Path: out, Name: PluginName, Command: PluginName, SHA256: sum, Version: version}, nil
}

// goTool is the go command that runs the tests, falling back to PATH.
func goTool() string {
	if goroot := os.Getenv("GOROOT"); goroot != "" {
		p := filepath.Join(goroot, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Env is what every end-to-end test shares: a Vault binary and the plugin,
// built once per test binary.
type Env struct {
	VaultBin string
	Plugin   *Plugin

	dir string // owned temporary directory, removed by Close
}

// NewEnv finds Vault and builds the plugin (version PluginVersion()) into a
// new temporary plugin directory. Call it from TestMain and Close it after
// m.Run. An error says how to get Vault when that is what is missing.
func NewEnv() (*Env, error) {
	bin, err := VaultBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "biot-e2e-")
	if err != nil {
		return nil, err
	}
	p, err := BuildPlugin(filepath.Join(dir, "plugins"), PluginVersion())
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Env{VaultBin: bin, Plugin: p, dir: dir}, nil
}

// Close removes the plugin directory.
func (e *Env) Close() {
	if e != nil && e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

// errPortInUse marks a start that failed because a port was taken meanwhile.
var errPortInUse = errors.New("address already in use")

// Main is the body of a TestMain for tests that use an Env: it sets *env
// up, runs the tests and cleans up, and returns the exit code. Without Vault
// (or when the plugin does not build) it fails, saying how to fix that; it
// never skips.
//
//	var env *vaulttest.Env
//	func TestMain(m *testing.M) { os.Exit(vaulttest.Main(m, &env)) }
func Main(m *testing.M, env **Env) int {
	start := time.Now()
	e, err := NewEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "vaulttest: cannot set up the end-to-end tests: %v\n", err)
		return 1
	}
	defer e.Close()
	fmt.Fprintf(os.Stderr, "vaulttest: vault %s, plugin %s (%s, sha256 %.12s...), ready in %s\n",
		e.VaultBin, e.Plugin.Path, e.Plugin.Version, e.Plugin.SHA256, time.Since(start).Round(time.Millisecond))
	*env = e
	return m.Run()
}
