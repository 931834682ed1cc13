//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
	"github.com/biot-med/vault-plugin-secrets-biot/internal/vaulttest"
)

// churnEnv sets how long TestReliabilityChurn churns ("make reliability"
// sets 5m).
const churnEnv = "BIOT_CHURN_DURATION"

func churnDuration(t testing.TB) time.Duration {
	t.Helper()
	s := os.Getenv(churnEnv)
	if s == "" {
		return 45 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration such as 45s or 5m", churnEnv, s)
	}
	return d
}

// TestReliabilityChurn runs the plugin through a churn of creds reads,
// config rewrites (same identity, other identity, unverified), refreshes of
// short-lived tokens, BioT going away and coming back, and lease
// revocations, for BIOT_CHURN_DURATION (default 45s). Afterwards, once
// settled, the plugin process has no more goroutines or open file
// descriptors than before, give or take a little.
func TestReliabilityChurn(t *testing.T) {
	t.Parallel()
	const (
		goroutineSlack = 10
		fdSlack        = 5
		settleMax      = 15 * time.Second
	)
	dur := churnDuration(t)
	fake := newFake(t, biotfake.Options{AccessTTL: 6 * time.Second})
	v := env.StartDev(t)
	pprofAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	registerWithEnv(t, v, "BIOT_PLUGIN_PPROF_ADDR="+pprofAddr)
	user := with(vaulttest.UserConfig(fake), "request_timeout", "5s", "verify_connection", true)
	service := with(vaulttest.ServiceConfig(fake), "request_timeout", "5s", "verify_connection", true)
	enableWithConfig(t, v, "biot", user)
	pid := pluginPID(t, v.Process().PID())
	c := apiClient(t, v, 16, time.Minute)

	var actionsMu sync.Mutex
	actions := map[string]int{}
	step := func(t *testing.T, i int) {
		t.Helper()
		name := ""
		var err error
		switch i % 8 {
		case 0:
			name = "config_rewrite"
			_, err = c.Logical().Write("biot/config", map[string]any{"request_timeout": strconv.Itoa(5+i%3) + "s"})
		case 1:
			name = "biot_stop_start"
			fake.Stop()
			time.Sleep(time.Second)
			err = fake.TryStart()
		case 2:
			name = "lease_revoke"
			_, err = c.Logical().Write("sys/leases/revoke-prefix/biot/creds", nil)
		case 3:
			name = "identity_switch"
			_, err = c.Logical().Write("biot/config", service)
		case 4:
			name = "identity_switch"
			_, err = c.Logical().Write("biot/config", user)
		case 5:
			name = "config_unverified"
			_, err = c.Logical().Write("biot/config", map[string]any{"verify_connection": false})
		case 6:
			name = "config_rewrite"
			_, err = c.Logical().Write("biot/config", map[string]any{"password": biotfake.DemoPassword, "verify_connection": true})
		case 7:
			name = "refresh_wait" // past the refresh point of the token from step 6
			time.Sleep(5 * time.Second)
		}
		if err != nil {
			t.Errorf("churn step %s: %v", name, err)
		}
		actionsMu.Lock()
		actions[name]++
		actionsMu.Unlock()
	}

	// Warm up: one round of every step, so that what is created once per
	// process (connection pools, gRPC streams) exists before counting.
	for i := range 8 {
		step(t, i)
		if _, _, err := readCreds(c, "biot"); err != nil {
			t.Fatalf("read during warm-up: %v", err)
		}
	}
	time.Sleep(2 * time.Second)
	g0, fd0 := goroutineCount(t, pprofAddr), fdCount(t, pid)
	t.Logf("plugin pid %d before churn: %d goroutines, %d fds", pid, g0, fd0)

	var st readStats
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	readersDone := make(chan struct{})
	go func() {
		defer close(readersDone)
		readLoop(ctx, c, "biot", 4, 50*time.Millisecond, func(_ *api.Secret, d time.Duration, err error) { st.record(err, d) })
	}()
	var peakG, peakFD int
	for i := 0; ctx.Err() == nil; i++ {
		step(t, i)
		if i%8 == 7 {
			peakG, peakFD = max(peakG, goroutineCount(t, pprofAddr)), max(peakFD, fdCount(t, pid))
		}
		time.Sleep(300 * time.Millisecond)
	}
	<-readersDone
	if err := fake.TryStart(); err != nil {
		t.Fatal(err)
	}
	// End with config rewrites while BioT stays up: a BioT stop closes
	// every connection, which would hide clients that are dropped with
	// their connections still open.
	for i := range 12 {
		step(t, []int{4, 6}[min(i, 1)]) // back to the user, then its password again and again
		if _, _, err := readCreds(c, "biot"); err != nil {
			t.Errorf("read after a config rewrite: %v", err)
		}
	}
	if _, _, err := readCreds(c, "biot"); err != nil {
		t.Errorf("read after the churn: %v", err)
	}
	if pids := pluginPIDs(v.Process().PID()); len(pids) != 1 || pids[0] != pid {
		t.Fatalf("plugin processes after the churn: %v, want the same one (pid %d): the plugin restarted", pids, pid)
	}

	// Settle: let background work finish, then count again.
	settleStart := time.Now()
	var g1, fd1 int
	settled := waitUntil(settleMax, func() bool {
		g1, fd1 = goroutineCount(t, pprofAddr), fdCount(t, pid)
		return g1 <= g0+goroutineSlack && fd1 <= fd0+fdSlack
	})
	st.figure("churn", fake, fmt.Sprintf("duration=%s goroutines_before=%d goroutines_after=%d goroutines_peak=%d fds_before=%d fds_after=%d fds_peak=%d settle_ms=%d actions=%v",
		dur, g0, g1, peakG, fd0, fd1, peakFD, time.Since(settleStart).Milliseconds(), actions)).print(t)
	if !settled {
		t.Errorf("after the churn and %s to settle the plugin has %d goroutines (before %d, allowed +%d) and %d fds (before %d, allowed +%d)",
			settleMax, g1, g0, goroutineSlack, fd1, fd0, fdSlack)
	}
	if st.ok.Load() == 0 {
		t.Error("no read succeeded during the churn")
	}
}
