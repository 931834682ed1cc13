// Command biot-sandbox runs a stand-in for BioT's login API (the User
// Management Service) on this machine, so the BioT Vault plugin can be tried
// without a BioT tenant. It is not BioT: it knows one demo user and one demo
// service user, keeps everything in memory and forgets it on exit.
//
// It serves internal/biotfake over HTTPS on 127.0.0.1:8443 by default, with a
// CA generated at startup and written to -ca-file (give that file to the
// plugin as ca_cert), or over plain HTTP with -http. Once listening it prints
// its URL and the demo credentials, and writes them as JSON to -ready-file if
// given. SIGINT or SIGTERM stops it.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

const usageText = `biot-sandbox: a stand-in for BioT's login API, for trying the BioT Vault
plugin without a BioT tenant. It is NOT BioT and is no substitute for testing
against a real BioT environment.

It serves BioT's user-management login endpoints (user login, token refresh,
logout, service-user login) with one demo user and one demo service user,
issues short-lived signed tokens, keeps everything in memory and forgets it
on exit. By default it listens on 127.0.0.1:8443 over HTTPS with a CA made up
at startup and written to -ca-file: pass that file to the plugin as ca_cert.

Usage:
  biot-sandbox [flags]

Examples:
  biot-sandbox                                  # https://127.0.0.1:8443
  biot-sandbox -http -addr 127.0.0.1:0          # plain HTTP, random port
  biot-sandbox -access-ttl 30s -refresh-ttl 2m  # watch the plugin refresh
  biot-sandbox -fail-login LOGIN_FAILED         # every login is refused
  biot-sandbox -fail-refresh 500 -fail-rate 0.5 # half the refreshes fail

Failures: -fail-login, -fail-refresh and -fail-service-login take one of
  a BioT error code   LOGIN_FAILED, REFRESH_TOKEN_NOT_VALID, USER_LOCKED,
                      USER_LOCKED_WITH_TIME, SERVICE_LOCKED, TOO_MANY_REQUESTS,
                      INTERNAL_SERVER_ERROR, GATEWAY_TIMEOUT, ... (BioT's
                      error body with the matching HTTP status)
  an HTTP status      400-599, with BioT's usual code for it
  reset               close the connection without answering
  malformed           answer 200 with a body that is not JSON
  mfa                 answer as if the user must complete MFA (no refresh token)
  password-reset      answer as if the user must reset the password

Flags:
`

// readyInfo is what -ready-file holds once the sandbox listens.
type readyInfo struct {
	URL       string `json:"url"`
	CAFile    string `json:"ca_file,omitempty"`
	Username  string `json:"username"`
	Password  string `json:"password"`
	ServiceID string `json:"service_id"`
	SecretKey string `json:"secret_key"`
	PID       int    `json:"pid"`
}

// config is the parsed command line.
type config struct {
	addr       string
	plainHTTP  bool
	caFile     string
	readyFile  string
	accessTTL  time.Duration
	refreshTTL time.Duration
	faults     map[biotfake.Endpoint]string
	failRate   float64
	failTimes  int
	slow       time.Duration
	quiet      bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "biot-sandbox:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage error")

func parseFlags(args []string, stdout, stderr io.Writer) (*config, error) {
	c := &config{faults: map[biotfake.Endpoint]string{}}
	fs := flag.NewFlagSet("biot-sandbox", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // -h prints the help below; a bad flag only its error
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8443", "`host:port` to listen on; port 0 picks a free port; an empty host means 127.0.0.1")
	fs.BoolVar(&c.plainHTTP, "http", false, "serve plain HTTP instead of HTTPS (the plugin accepts http:// only for loopback hosts)")
	fs.StringVar(&c.caFile, "ca-file", filepath.Join(".cache", "biot-sandbox-ca.pem"), "`file` to write the generated CA certificate (PEM) to; ignored with -http")
	fs.StringVar(&c.readyFile, "ready-file", "", "once listening, write JSON {url, ca_file, username, password, service_id, secret_key, pid} to this `file` (removed on exit)")
	fs.DurationVar(&c.accessTTL, "access-ttl", biotfake.DefaultAccessTTL, "lifetime of issued access tokens")
	fs.DurationVar(&c.refreshTTL, "refresh-ttl", biotfake.DefaultRefreshTTL, "lifetime of issued refresh tokens")
	failFlag := func(name string, ep biotfake.Endpoint, what string) {
		fs.Func(name, "make "+what+" fail the `way` given (see Failures above)", func(s string) error {
			if _, err := parseFault(s); err != nil {
				return err
			}
			c.faults[ep] = s
			return nil
		})
	}
	failFlag("fail-login", biotfake.EndpointLogin, "user logins")
	failFlag("fail-refresh", biotfake.EndpointRefresh, "token refreshes")
	failFlag("fail-service-login", biotfake.EndpointServiceLogin, "service-user logins")
	fs.Float64Var(&c.failRate, "fail-rate", 1, "fraction of calls (0 < rate <= 1) the -fail-* flags apply to")
	fs.IntVar(&c.failTimes, "fail-times", 0, "the -fail-* flags apply to this many calls each, then stop (0: no limit)")
	fs.DurationVar(&c.slow, "slow", 0, "delay every answer by this long")
	fs.BoolVar(&c.quiet, "quiet", false, "do not log each request")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usageText)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return nil, err
		}
		fmt.Fprintln(stderr, "run biot-sandbox -h for help")
		return nil, errUsage
	}
	var problems []string
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected argument %q", fs.Arg(0)))
	}
	if c.accessTTL < time.Second {
		problems = append(problems, "-access-ttl must be at least 1s")
	}
	if c.refreshTTL < time.Second {
		problems = append(problems, "-refresh-ttl must be at least 1s")
	}
	if c.failRate <= 0 || c.failRate > 1 {
		problems = append(problems, "-fail-rate must be in (0, 1]")
	}
	if c.failTimes < 0 {
		problems = append(problems, "-fail-times must not be negative")
	}
	if c.slow < 0 {
		problems = append(problems, "-slow must not be negative")
	}
	if !c.plainHTTP && c.caFile == "" {
		problems = append(problems, "-ca-file is required for HTTPS (or use -http)")
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, "biot-sandbox:", p)
		}
		fmt.Fprintln(stderr, "run biot-sandbox -h for help")
		return nil, errUsage
	}
	return c, nil
}

// statusByCode maps the BioT error codes -fail-* accepts to their HTTP status.
var statusByCode = map[string]int{
	"BAD_REQUEST":             http.StatusBadRequest,
	"LOGIN_FAILED":            http.StatusForbidden,
	"REFRESH_TOKEN_NOT_VALID": http.StatusForbidden,
	"ACCESS_DENIED":           http.StatusForbidden,
	"USER_LOCKED":             http.StatusUnauthorized,
	"USER_LOCKED_WITH_TIME":   http.StatusUnauthorized,
	"SERVICE_LOCKED":          http.StatusUnauthorized,
	"TOKEN_NOT_VALID":         http.StatusUnauthorized,
	"TOO_MANY_REQUESTS":       http.StatusTooManyRequests,
	"INTERNAL_SERVER_ERROR":   http.StatusInternalServerError,
	"BAD_GATEWAY":             http.StatusBadGateway,
	"SERVICE_UNAVAILABLE":     http.StatusServiceUnavailable,
	"GATEWAY_TIMEOUT":         http.StatusGatewayTimeout,
}

// parseFault turns a -fail-* value into a fault.
func parseFault(s string) (biotfake.Fault, error) {
	v := strings.TrimSpace(s)
	switch strings.ToLower(v) {
	case "reset":
		return biotfake.Fault{Reset: true}, nil
	case "malformed":
		return biotfake.Fault{Malformed: true}, nil
	case "mfa", "mfa-required":
		return biotfake.Fault{MFARequired: true}, nil
	case "password-reset", "password-reset-required":
		return biotfake.Fault{PasswordResetRequired: true}, nil
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 400 || n > 599 {
			return biotfake.Fault{}, fmt.Errorf("HTTP status %d: want 400-599", n)
		}
		f := biotfake.Fault{Status: n}
		if n == http.StatusTooManyRequests {
			f.RetryAfter = "1"
		}
		return f, nil
	}
	code := strings.ToUpper(v)
	st, ok := statusByCode[code]
	if !ok {
		return biotfake.Fault{}, fmt.Errorf("unknown failure %q: want a BioT error code, an HTTP status, reset, malformed, mfa or password-reset", s)
	}
	f := biotfake.Fault{Status: st, Code: code}
	if st == http.StatusTooManyRequests {
		f.RetryAfter = "1"
	}
	return f, nil
}

// listenAddr gives an empty host the loopback address.
func listenAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("-addr %q: %v", addr, err)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// urlHost is the host clients should dial for a listener bound to host.
func urlHost(ln net.Addr) string {
	host, port, _ := net.SplitHostPort(ln.String())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stdout, stderr)
	if err != nil {
		return err
	}
	addr, err := listenAddr(c.addr)
	if err != nil {
		return err
	}

	fake := biotfake.NewFake(biotfake.Options{AccessTTL: c.accessTTL, RefreshTTL: c.refreshTTL})
	for ep, spec := range c.faults {
		f, _ := parseFault(spec) // validated by parseFlags
		f.Times = c.failTimes
		if c.failRate < 1 {
			f.Rate = c.failRate
		}
		fake.Inject(ep, f)
	}
	if c.slow > 0 {
		for _, ep := range []biotfake.Endpoint{biotfake.EndpointLogin, biotfake.EndpointRefresh, biotfake.EndpointLogout,
			biotfake.EndpointServiceLogin, biotfake.EndpointSelf, biotfake.EndpointPublicKey} {
			// A delay-only fault: checked after the -fail-* faults, so a
			// failing call is not also delayed.
			fake.Inject(ep, biotfake.Fault{Delay: c.slow})
		}
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("cannot listen on %s: the port is in use (pick another with -addr, or -addr 127.0.0.1:0 for a free one)", addr)
		}
		return fmt.Errorf("cannot listen on %s: %w", addr, err)
	}
	defer ln.Close()
	host, _, _ := net.SplitHostPort(ln.Addr().String())

	scheme, caPath := "http", ""
	var serveLn net.Listener = ln
	if !c.plainHTTP {
		hosts := []string{"127.0.0.1", "::1", "localhost"}
		if ip := net.ParseIP(host); ip == nil || (!ip.IsLoopback() && !ip.IsUnspecified()) {
			hosts = append(hosts, host)
		}
		caPEM, cert, err := biotfake.GenerateCA(hosts)
		if err != nil {
			return fmt.Errorf("generating the sandbox CA: %w", err)
		}
		if caPath, err = filepath.Abs(c.caFile); err != nil {
			return err
		}
		if err := writeFileAtomic(caPath, caPEM, 0o644); err != nil {
			return fmt.Errorf("writing the CA certificate: %w", err)
		}
		scheme = "https"
		serveLn = tls.NewListener(ln, &tls.Config{
			Certificates: []tls.Certificate{cert},
			NextProtos:   []string{"http/1.1"}, // the reset fault needs HTTP/1.1
			MinVersion:   tls.VersionTLS12,
		})
	}

	var handler http.Handler = fake
	if !c.quiet {
		handler = logRequests(fake, stderr)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(serveLn) }()

	info := readyInfo{
		URL:       scheme + "://" + urlHost(ln.Addr()),
		CAFile:    caPath,
		Username:  biotfake.DemoUsername,
		Password:  biotfake.DemoPassword,
		ServiceID: biotfake.DemoServiceID,
		SecretKey: biotfake.DemoServiceSecret,
		PID:       os.Getpid(),
	}
	printBanner(stdout, c, info, host)
	if c.readyFile != "" {
		b, _ := json.MarshalIndent(info, "", "  ")
		if err := writeFileAtomic(c.readyFile, append(b, '\n'), 0o600); err != nil {
			_ = srv.Close()
			return fmt.Errorf("writing -ready-file: %w", err)
		}
		defer os.Remove(c.readyFile)
	}

	select {
	case err := <-serveErr:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	fmt.Fprintln(stderr, "biot-sandbox: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	return nil
}

func printBanner(w io.Writer, c *config, info readyInfo, host string) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintln(bw, "biot-sandbox: a stand-in for BioT's login API, for trying the plugin. Not BioT.")
	fmt.Fprintf(bw, "  url:          %s\n", info.URL)
	if info.CAFile != "" {
		fmt.Fprintf(bw, "  ca_cert:      %s\n", info.CAFile)
	}
	fmt.Fprintf(bw, "  user:         username=%s password=%s\n", info.Username, info.Password)
	fmt.Fprintf(bw, "  service user: service_id=%s secret_key=%s\n", info.ServiceID, info.SecretKey)
	fmt.Fprintf(bw, "  tokens:       access %s, refresh %s\n", c.accessTTL, c.refreshTTL)
	for _, ep := range []biotfake.Endpoint{biotfake.EndpointLogin, biotfake.EndpointRefresh, biotfake.EndpointServiceLogin} {
		if spec, ok := c.faults[ep]; ok {
			fmt.Fprintf(bw, "  failing:      %s -> %s (rate %g, times %d; 0 = unlimited)\n", ep, spec, c.failRate, c.failTimes)
		}
	}
	if c.slow > 0 {
		fmt.Fprintf(bw, "  slow:         every answer delayed %s\n", c.slow)
	}
	if !isLoopback(host) {
		fmt.Fprintf(bw, "  WARNING:      listening on %s, not only loopback: anyone who can reach it can log in with the demo credentials\n", host)
	}
	fmt.Fprintln(bw, "Configure the plugin with:")
	cfg := fmt.Sprintf("  vault write biot/config url=%s username=%s password=%s", info.URL, info.Username, info.Password)
	if info.CAFile != "" {
		cfg += " ca_cert=@" + info.CAFile
	}
	fmt.Fprintln(bw, cfg)
	fmt.Fprintln(bw, "Press Ctrl-C to stop.")
}

// writeFileAtomic writes data to path through a temporary file and a rename,
// so a reader polling for path never sees it half written.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, perm)
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
	}
	return werr
}

// logRequests logs one line per request: method, path, status, duration.
// Never a body: bodies carry passwords and tokens.
func logRequests(h http.Handler, w io.Writer) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: rw}
		defer func() {
			status := strconv.Itoa(sw.status)
			switch {
			case sw.hijacked:
				status = "reset"
			case sw.status == 0:
				status = "aborted"
			}
			fmt.Fprintf(w, "%s %s %s -> %s (%s)\n", start.UTC().Format("15:04:05.000"), r.Method, r.URL.Path, status,
				time.Since(start).Round(time.Millisecond))
		}()
		h.ServeHTTP(sw, r)
	})
}

// statusWriter records the status written; it keeps Hijack working for the
// reset fault.
type statusWriter struct {
	http.ResponseWriter
	status   int
	hijacked bool
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := s.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	c, rw, err := hj.Hijack()
	if err == nil {
		s.hijacked = true
	}
	return c, rw, err
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
