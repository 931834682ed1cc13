// Command biot-bench measures the BioT secrets engine inside a real Vault
// server, as "make bench" runs it (see BENCHMARKS.md).
//
// Throughput mode starts one Vault dev server with the plugin at biot/ (its
// BioT is the in-process stand-in, internal/biotfake), KV v2 at kv/ with one
// small secret and SSH at ssh/ with an OTP role, and drives each of
//
//	GET  /v1/biot/creds       the plugin over gRPC, plus a lease
//	GET  /v1/kv/data/bench    Vault's cheapest secret read: the ceiling
//	POST /v1/ssh/creds/otp    a built-in leased secret with no upstream
//
// with C closed-loop clients over keep-alive HTTP/1.1, interleaved in rounds
// so that drift hits all three alike. It prints throughput, latency, errors,
// the CPU each process spent per request, the ratios creds/kv and creds/ssh,
// the stand-in's login and refresh counts, the plugin's RSS and goroutines,
// and the leases Vault holds.
//
// Economy mode starts a fresh Vault with short-lived BioT tokens (30s) and
// 64 readers for 2 minutes, and asserts one login and one refresh per two
// thirds of a token lifetime (within one).
//
// Every knob is a flag with an environment default (BENCH_*), so that
// "make bench" can be shortened: BENCH_DURATION=3s BENCH_ECONOMY_DURATION=30s
// BENCH_ECONOMY_ACCESS_TTL=9s make bench. The exit status is non-zero when a
// request failed, when BioT saw other than one login, or when the economy
// refresh count is off; timings never fail the run.
package main

import (
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

type options struct {
	mode        string
	clients     int
	duration    time.Duration
	rounds      int
	warmup      time.Duration
	revoke      bool
	profileDir  string
	profileSecs int
	pluginEnv   string

	ecoClients    int
	ecoDuration   time.Duration
	ecoAccessTTL  time.Duration
	ecoRefreshTTL time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", envString("BENCH_MODE", "all"), "all, throughput or economy (env BENCH_MODE)")
	flag.IntVar(&o.clients, "clients", envInt("BENCH_CLIENTS", 16), "concurrent closed-loop clients per target (env BENCH_CLIENTS)")
	flag.DurationVar(&o.duration, "duration", envDuration("BENCH_DURATION", 10*time.Second), "measured time per target, split over the rounds (env BENCH_DURATION)")
	flag.IntVar(&o.rounds, "rounds", envInt("BENCH_ROUNDS", 3), "rounds; each runs every target for duration/rounds (env BENCH_ROUNDS)")
	flag.DurationVar(&o.warmup, "warmup", envDuration("BENCH_WARMUP", 2*time.Second), "unmeasured load per target before the rounds (env BENCH_WARMUP)")
	flag.BoolVar(&o.revoke, "revoke-between-rounds", envBool("BENCH_REVOKE"), "revoke the biot/creds and ssh/creds leases after each round (env BENCH_REVOKE=1)")
	flag.StringVar(&o.profileDir, "profile-dir", envString("BENCH_PROFILE_DIR", ""), "after the rounds, save CPU profiles of Vault and the plugin under each target's load here (env BENCH_PROFILE_DIR)")
	flag.IntVar(&o.profileSecs, "profile-seconds", envInt("BENCH_PROFILE_SECONDS", 10), "length of each CPU profile (env BENCH_PROFILE_SECONDS)")
	flag.StringVar(&o.pluginEnv, "plugin-env", envString("BENCH_PLUGIN_ENV", ""), "extra KEY=VALUE,... for the plugin process, given at registration, e.g. GOGC=200 (env BENCH_PLUGIN_ENV)")
	flag.IntVar(&o.ecoClients, "economy-clients", envInt("BENCH_ECONOMY_CLIENTS", 64), "readers in economy mode (env BENCH_ECONOMY_CLIENTS)")
	flag.DurationVar(&o.ecoDuration, "economy-duration", envDuration("BENCH_ECONOMY_DURATION", 2*time.Minute), "economy run time (env BENCH_ECONOMY_DURATION)")
	flag.DurationVar(&o.ecoAccessTTL, "economy-access-ttl", envDuration("BENCH_ECONOMY_ACCESS_TTL", 30*time.Second), "BioT access-token lifetime in economy mode (env BENCH_ECONOMY_ACCESS_TTL)")
	flag.DurationVar(&o.ecoRefreshTTL, "economy-refresh-ttl", envDuration("BENCH_ECONOMY_REFRESH_TTL", 5*time.Minute), "BioT refresh-token lifetime in economy mode (env BENCH_ECONOMY_REFRESH_TTL)")
	flag.Parse()

	if o.clients < 1 || o.rounds < 1 || o.duration <= 0 || o.ecoClients < 1 || o.ecoDuration <= 0 ||
		o.ecoAccessTTL < 3*time.Second || o.ecoRefreshTTL <= o.ecoAccessTTL {
		fmt.Fprintln(os.Stderr, "biot-bench: bad flags: need clients, rounds >= 1, durations > 0, economy-access-ttl >= 3s, economy-refresh-ttl > economy-access-ttl")
		os.Exit(2)
	}
	doThroughput := o.mode == "all" || o.mode == "throughput"
	doEconomy := o.mode == "all" || o.mode == "economy"
	if !doThroughput && !doEconomy {
		fmt.Fprintf(os.Stderr, "biot-bench: -mode %q: want all, throughput or economy\n", o.mode)
		os.Exit(2)
	}

	start := time.Now()
	env, err := vaulttest.NewEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "biot-bench: %v\n", err)
		os.Exit(1)
	}
	atExit = env.Close
	// Stop every Vault on Ctrl-C as on a normal exit.
	var (
		mu      sync.Mutex
		current *runner
	)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		mu.Lock()
		if current != nil {
			current.Close()
		}
		env.Close()
		os.Exit(130)
	}()
	use := func(r *runner) {
		mu.Lock()
		current = r
		mu.Unlock()
	}
	fmt.Printf("biot-bench: Vault %s, plugin %s, %d CPUs (GOMAXPROCS %d), ready in %s\n\n",
		env.VaultBin, env.Plugin.Version, runtime.NumCPU(), runtime.GOMAXPROCS(0), time.Since(start).Round(time.Millisecond))

	ok := true
	if doThroughput {
		r := newRunner("throughput")
		use(r)
		ok = throughput(r, env, o) && ok
		r.Close()
	}
	if doEconomy {
		r := newRunner("economy")
		use(r)
		ok = economy(r, env, o) && ok
		r.Close()
	}
	use(nil)
	env.Close()
	if !ok {
		fmt.Println("\nbiot-bench: FAIL")
		os.Exit(1)
	}
	fmt.Println("\nbiot-bench: ok")
}

// throughput compares biot/creds with a KV read and SSH OTP creds.
func throughput(r *runner, env *vaulttest.Env, o options) bool {
	s := newStack(r, env, biotfake.Options{}, true, biotfake.DefaultAccessTTL, o.pluginEnv)
	targets := []target{targetCreds, targetKV, targetSSH}
	rt := newTransport(o.clients)
	defer rt.CloseIdleConnections()
	for _, t := range targets {
		s.check(rt, t)
	}
	probe := s.probe()
	if probe.pluginPID == 0 {
		r.Fatalf("cannot find the plugin process (%s)", s.pluginExe)
	}
	vaultRSS0 := rssKiB(probe.vaultPID)
	vers, _ := s.v.Client.Sys().Health()
	perRound := o.duration / time.Duration(o.rounds)
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if la, _ := strconv.ParseFloat(f[0], 64); la > 0.5 {
				fmt.Printf("   note: load average %s before the run: other processes share the CPUs; see the \"other procs\" column\n", f[0])
			}
		}
	}
	fmt.Printf("== throughput: %d closed-loop clients per target, keep-alive HTTP/1.1, %d rounds x %s per target (%s measured each), warm-up %s each\n",
		o.clients, o.rounds, perRound.Round(time.Millisecond), o.duration, o.warmup)
	if vers != nil {
		fmt.Printf("   Vault %s dev server (in-memory storage), plugin pid %d, BioT stand-in token lifetime %s\n", vers.Version, probe.pluginPID, biotfake.DefaultAccessTTL)
	}
	if o.pluginEnv != "" {
		fmt.Printf("   plugin environment: %s\n", o.pluginEnv)
	}

	// One pre-built request per client and target; latency slices sized for
	// the round so that appending does not allocate while measuring.
	capacity := int(perRound.Seconds()*20000/float64(o.clients)) + 1024
	workers := make([][]*worker, len(targets))
	for i, t := range targets {
		for range o.clients {
			w, err := newWorker(rt, s.base, s.v.Token, t, capacity)
			if err != nil {
				r.Fatal(err)
			}
			workers[i] = append(workers[i], w)
		}
	}
	if o.warmup > 0 {
		for i := range targets {
			run(workers[i], o.warmup, nil)
		}
	}

	results := make([]*result, len(targets))
	for i, t := range targets {
		results[i] = &result{target: t}
	}
	for round := range o.rounds {
		// Rotate the order each round (ABC, BCA, CAB) so no target always
		// follows the same one.
		for k := range targets {
			i := (round + k) % len(targets)
			results[i].add(run(workers[i], perRound, probe))
		}
		if o.revoke {
			for _, p := range []string{"biot/creds/", "ssh/creds/"} {
				if err := s.revokePrefix(p); err != nil {
					r.Errorf("revoke-prefix %s: %v", p, err)
				}
			}
		}
	}
	logins, refreshes := s.fake.Calls(biotfake.EndpointLogin), s.fake.Calls(biotfake.EndpointRefresh)
	sinceLogin := time.Since(s.configAt)

	ok := true
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "target\trequests\treq/s\tp50\tp99\tmax\terrors\tCPU µs/req: vault\tplugin\tload gen\tmachine: idle\tother procs\t")
	for _, res := range results {
		p50, p99, mx := res.quantiles()
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n", res.target.name, res.requests, res.rate(),
			fmtDur(p50), fmtDur(p99), fmtDur(mx), res.errs,
			perRequest(res.cpu.vault, res.requests), perRequest(res.cpu.plugin, res.requests), perRequest(res.cpu.self, res.requests),
			res.cpu.share(res.cpu.idle), res.cpu.share(res.cpu.others()))
		if res.errs > 0 {
			ok = false
		}
	}
	tw.Flush()
	fmt.Println()
	for _, res := range results {
		var rs []string
		for _, x := range res.rounds {
			rs = append(rs, strconv.FormatFloat(x, 'f', 0, 64))
		}
		fmt.Printf("   %-14s req/s per round: %s   (%s)\n", res.target.name, strings.Join(rs, " "), res.target)
	}
	for _, res := range results {
		if res.errs > 0 {
			fmt.Printf("   %s: %d errors, first: %s\n", res.target.name, res.errs, res.firstErr)
		}
	}

	creds, kv, ssh := results[0].rate(), results[1].rate(), results[2].rate()
	// Server CPU per request (Vault + plugin) sets the throughput of a
	// saturated machine and hardly moves with other load; its inverse ratio
	// is a noise-robust estimate of the throughput ratio.
	srv := func(r *result) float64 { return float64(r.cpu.vault+r.cpu.plugin) / float64(max(r.requests, 1)) }
	fmt.Println()
	fmt.Printf("ratio creds/kv  = %.2f   (aim >= 0.60: %s)   by server CPU per request: %.2f\n", creds/kv, verdict(creds/kv >= 0.6), srv(results[1])/srv(results[0]))
	fmt.Printf("ratio creds/ssh = %.2f   (aim >= 1.00: %s)   by server CPU per request: %.2f\n", creds/ssh, verdict(creds/ssh >= 1.0), srv(results[2])/srv(results[0]))

	wantRefresh := int64(sinceLogin / (2 * biotfake.DefaultAccessTTL / 3))
	fmt.Printf("BioT stand-in:    %d login, %d refreshes in %s since the config write (token lifetime %s: %d refreshes due)\n",
		logins, refreshes, sinceLogin.Round(time.Second), biotfake.DefaultAccessTTL, wantRefresh)
	if logins != 1 {
		r.Errorf("BioT saw %d logins, want 1", logins)
		ok = false
	}
	credsLeases, err1 := s.leases("biot/creds/")
	sshLeases, err2 := s.leases("ssh/creds/otp/")
	if err1 != nil || err2 != nil {
		fmt.Printf("leases in Vault:  cannot list: %v %v\n", err1, err2)
	} else {
		note := "none revoked or expired during the run"
		if o.revoke {
			note = "revoked after each round"
		}
		fmt.Printf("leases in Vault:  biot/creds %d, ssh/creds/otp %d, kv none (%s)\n", credsLeases, sshLeases, note)
	}
	ok = reportProcesses(s, vaultRSS0, credsLeases+sshLeases) && ok

	if o.profileDir != "" {
		profile(r, s, workers, targets, o)
	}
	return ok
}

// profile saves CPU profiles of Vault (and, under biot/creds, the plugin)
// while each target is under load. It runs after the measured rounds, since
// profiling costs CPU.
func profile(r *runner, s *stack, workers [][]*worker, targets []target, o options) {
	dir, err := filepath.Abs(o.profileDir)
	if err != nil {
		r.Fatal(err)
	}
	secs := strconv.Itoa(o.profileSecs)
	fmt.Printf("\n== CPU profiles (%ss each, under the same load) in %s\n", secs, dir)
	names := []string{"creds", "kv", "ssh"}
	for i := range targets {
		done := make(chan segment)
		go func() { done <- run(workers[i], time.Duration(o.profileSecs+2)*time.Second, nil) }()
		time.Sleep(time.Second)
		var wg sync.WaitGroup
		save := func(u, token, path string) {
			defer wg.Done()
			if err := saveProfile(u, token, path); err != nil {
				r.Logf("profile: %v", err)
				return
			}
			fmt.Printf("   %s\n", path)
		}
		wg.Add(1)
		go save(s.v.Addr+"/v1/sys/pprof/profile?seconds="+secs, s.v.Token, filepath.Join(dir, "vault-"+names[i]+".pprof"))
		if i == 0 {
			wg.Add(1)
			go save("http://"+s.pprofAddr+"/debug/pprof/profile?seconds="+secs, "", filepath.Join(dir, "plugin-creds.pprof"))
		}
		wg.Wait()
		seg := <-done
		fmt.Printf("   %s: %.0f req/s while profiled (µs/req of a function = its seconds / %s / req/s x 1e6)\n",
			targets[i].name, float64(seg.requests)/seg.elapsed.Seconds(), secs+"s")
	}
	fmt.Printf("   read with: go tool pprof -top %s/vault-creds.pprof\n", dir)
}

// economy checks that BioT sees one login and one refresh per two thirds of
// a token lifetime, however many readers there are.
func economy(r *runner, env *vaulttest.Env, o options) bool {
	s := newStack(r, env, biotfake.Options{AccessTTL: o.ecoAccessTTL, RefreshTTL: o.ecoRefreshTTL}, false, 0, o.pluginEnv)
	rt := newTransport(o.ecoClients)
	defer rt.CloseIdleConnections()
	s.check(rt, targetCreds)
	probe := s.probe()
	if probe.pluginPID == 0 {
		r.Fatalf("cannot find the plugin process (%s)", s.pluginExe)
	}
	vaultRSS0 := rssKiB(probe.vaultPID)
	every := 2 * o.ecoAccessTTL / 3
	fmt.Printf("\n== upstream economy: %d readers of biot/creds for %s, BioT access tokens of %s (refresh due every %s), refresh tokens of %s\n",
		o.ecoClients, o.ecoDuration, o.ecoAccessTTL, every, o.ecoRefreshTTL)

	workers := make([]*worker, o.ecoClients)
	capacity := int(o.ecoDuration.Seconds()*10000/float64(o.ecoClients)) + 1024
	for i := range workers {
		w, err := newWorker(rt, s.base, s.v.Token, targetCreds, capacity)
		if err != nil {
			r.Fatal(err)
		}
		workers[i] = w
	}
	stopTicker := make(chan struct{})
	go func() {
		t := time.NewTicker(15 * time.Second)
		defer t.Stop()
		began := time.Now()
		for {
			select {
			case <-stopTicker:
				return
			case <-t.C:
				fmt.Fprintf(os.Stderr, "   ... %s: %d login, %d refreshes so far\n", time.Since(began).Round(time.Second),
					s.fake.Calls(biotfake.EndpointLogin), s.fake.Calls(biotfake.EndpointRefresh))
			}
		}
	}()
	seg := run(workers, o.ecoDuration, probe)
	close(stopTicker)
	res := &result{target: targetCreds}
	res.add(seg)

	logins := s.fake.Calls(biotfake.EndpointLogin)
	refreshes := s.fake.Calls(biotfake.EndpointRefresh)
	services := s.fake.Calls(biotfake.EndpointServiceLogin)
	expected := o.ecoDuration.Seconds() / every.Seconds()
	lo, hi := int64(math.Max(0, math.Floor(expected)-1)), int64(math.Ceil(expected)+1)

	p50, p99, mx := res.quantiles()
	fmt.Printf("   %d requests, %.0f req/s, p50 %s, p99 %s, max %s, %d errors\n",
		res.requests, res.rate(), fmtDur(p50), fmtDur(p99), fmtDur(mx), res.errs)
	fmt.Printf("   CPU µs/req: vault %s, plugin %s, load gen %s; machine idle %s, other processes %s\n",
		perRequest(res.cpu.vault, res.requests), perRequest(res.cpu.plugin, res.requests), perRequest(res.cpu.self, res.requests),
		res.cpu.share(res.cpu.idle), res.cpu.share(res.cpu.others()))
	if res.errs > 0 {
		fmt.Printf("   first error: %s\n", res.firstErr)
	}
	ok := true
	check := func(good bool, format string, args ...any) {
		fmt.Printf("   %-5s "+format+"\n", append([]any{verdictWord(good)}, args...)...)
		ok = ok && good
	}
	check(logins == 1, "BioT logins: %d (want 1: the config write's, then refreshes only)", logins)
	check(refreshes >= lo && refreshes <= hi, "BioT refreshes: %d (want %d..%d: %s / %s = %.1f, within one)", refreshes, lo, hi, o.ecoDuration, every, expected)
	check(services == 0, "BioT service-user logins: %d (want 0)", services)
	check(res.errs == 0, "failed reads: %d (want 0)", res.errs)
	n, err := s.leases("biot/creds/")
	if err != nil {
		fmt.Printf("leases in Vault:  cannot list: %v\n", err)
	} else {
		fmt.Printf("leases in Vault:  biot/creds %d at the end (each lease ends %s before its token; older ones expired and were revoked)\n",
			n, min(5*time.Second, o.ecoAccessTTL/10))
	}
	return reportProcesses(s, vaultRSS0, 0) && ok
}

// reportProcesses prints the plugin's and Vault's RSS and the plugin's
// goroutine count; with leases > 0, Vault's growth per lease since rss0.
func reportProcesses(s *stack, vaultRSS0 int64, leases int) bool {
	pid := s.pluginPID()
	if pid == 0 {
		fmt.Println("plugin process:   NOT FOUND (did it exit?)")
		return false
	}
	g, err := s.goroutines()
	gs := strconv.Itoa(g)
	if err != nil {
		gs = "? (" + err.Error() + ")"
	}
	fmt.Printf("plugin process:   pid %d, RSS %s, %s goroutines\n", pid, fmtKiB(rssKiB(pid)), gs)
	rss := rssKiB(s.vaultPID())
	growth := ""
	if leases > 0 && rss > vaultRSS0 {
		growth = fmt.Sprintf(", +%.1f KiB of RSS per lease held, GC headroom included", float64(rss-vaultRSS0)/float64(leases))
	}
	fmt.Printf("vault process:    pid %d, RSS %s (%s before the load%s)\n", s.vaultPID(), fmtKiB(rss), fmtKiB(vaultRSS0), growth)
	return true
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func verdictWord(ok bool) string {
	if ok {
		return "ok"
	}
	return "FAIL"
}

func envString(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func envInt(key string, def int) int {
	if v := os.Getenv(key); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "biot-bench: %s=%q: %v\n", key, v, err)
			os.Exit(2)
		}
		return n
	}
	return def
}

func envDuration(key string, def time.Duration) time.Duration {
	if v := os.Getenv(key); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "biot-bench: %s=%q: %v\n", key, v, err)
			os.Exit(2)
		}
		return d
	}
	return def
}

func envBool(key string) bool {
	v := os.Getenv(key)
	return v == "1" || v == "true" || v == "yes"
}
