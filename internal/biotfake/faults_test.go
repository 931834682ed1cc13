package biotfake

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestFaultStatus(t *testing.T) {
	f := NewFake(Options{})
	f.Inject(EndpointLogin, Fault{Status: 429, Code: "TOO_MANY_REQUESTS", Message: "slow down", RetryAfter: "7"})
	r := login(f, DemoUsername, DemoPassword)
	e := r.envelope(t, http.StatusTooManyRequests, "TOO_MANY_REQUESTS")
	if e.Message != "slow down" {
		t.Errorf("message = %q", e.Message)
	}
	if r.header.Get("Retry-After") != "7" {
		t.Errorf("Retry-After = %q", r.header.Get("Retry-After"))
	}
	// Other endpoints are untouched.
	if r := do(f, http.MethodPost, PathServiceLogin, map[string]string{"id": DemoServiceID, "secretKey": DemoServiceSecret}); r.status != 200 {
		t.Errorf("service login under a login fault: %d", r.status)
	}
	// Until cleared.
	login(f, DemoUsername, DemoPassword).envelope(t, 429, "TOO_MANY_REQUESTS")
	f.ClearFaults()
	mustLogin(t, f, DemoUsername, DemoPassword)
	if f.Calls(EndpointLogin) != 3 || f.Successes(EndpointLogin) != 1 {
		t.Errorf("calls/successes = %d/%d", f.Calls(EndpointLogin), f.Successes(EndpointLogin))
	}
}

func TestFaultDefaults(t *testing.T) {
	f := NewFake(Options{})
	f.Inject(EndpointLogin, Fault{Status: 401, Code: "USER_LOCKED_WITH_TIME", Times: 1})
	e := login(f, DemoUsername, DemoPassword).envelope(t, 401, "USER_LOCKED_WITH_TIME")
	if e.Details["timeLeftInMinutes"] != float64(5) {
		t.Errorf("details = %v", e.Details)
	}
	f.Inject(EndpointLogin, Fault{Status: 401, Code: "USER_LOCKED_WITH_TIME", Details: map[string]any{"minutesLeft": 3}, Times: 1})
	e = login(f, DemoUsername, DemoPassword).envelope(t, 401, "USER_LOCKED_WITH_TIME")
	if e.Details["minutesLeft"] != float64(3) || len(e.Details) != 1 {
		t.Errorf("details = %v", e.Details)
	}
	for _, c := range []struct {
		ep     Endpoint
		status int
		code   string
	}{
		{EndpointLogin, 500, "INTERNAL_SERVER_ERROR"},
		{EndpointLogin, 504, "GATEWAY_TIMEOUT"},
		{EndpointLogin, 403, "LOGIN_FAILED"},
		{EndpointLogin, 401, "USER_LOCKED"},
		{EndpointRefresh, 403, "REFRESH_TOKEN_NOT_VALID"},
		{EndpointServiceLogin, 401, "SERVICE_LOCKED"},
	} {
		f.Inject(c.ep, Fault{Status: c.status, Times: 1})
		var r resp
		switch c.ep {
		case EndpointLogin:
			r = login(f, DemoUsername, DemoPassword)
		case EndpointRefresh:
			r = refresh(f, "x")
		case EndpointServiceLogin:
			r = do(f, http.MethodPost, PathServiceLogin, map[string]string{"id": DemoServiceID, "secretKey": DemoServiceSecret})
		}
		r.envelope(t, c.status, c.code)
	}
}

func TestFaultTimes(t *testing.T) {
	f := NewFake(Options{})
	f.Inject(EndpointLogin, Fault{Status: 500, Code: "INTERNAL_SERVER_ERROR", Times: 2})
	login(f, DemoUsername, DemoPassword).envelope(t, 500, "INTERNAL_SERVER_ERROR")
	login(f, DemoUsername, DemoPassword).envelope(t, 500, "INTERNAL_SERVER_ERROR")
	mustLogin(t, f, DemoUsername, DemoPassword)
	mustLogin(t, f, DemoUsername, DemoPassword)
}

func TestFaultOrderFirstMatchWins(t *testing.T) {
	f := NewFake(Options{})
	f.Inject(EndpointRefresh, Fault{Status: 500, Times: 1}) // another endpoint
	f.Inject(EndpointLogin, Fault{Status: 504, Code: "GATEWAY_TIMEOUT", Times: 1})
	f.Inject(EndpointLogin, Fault{Status: 500, Code: "INTERNAL_SERVER_ERROR", Times: 1})
	login(f, DemoUsername, DemoPassword).envelope(t, 504, "GATEWAY_TIMEOUT")
	login(f, DemoUsername, DemoPassword).envelope(t, 500, "INTERNAL_SERVER_ERROR")
	mustLogin(t, f, DemoUsername, DemoPassword)
	refresh(f, "x").envelope(t, 500, "INTERNAL_SERVER_ERROR")
}

func TestFaultRate(t *testing.T) {
	f := NewFake(Options{})
	f.Inject(EndpointLogin, Fault{Status: 503, Rate: 0.5})
	var failed []int
	for k := 1; k <= 100; k++ {
		r := login(f, DemoUsername, DemoPassword)
		switch r.status {
		case 503:
			failed = append(failed, k)
		case 200:
		default:
			t.Fatalf("call %d: %d", k, r.status)
		}
	}
	if len(failed) != 50 {
		t.Fatalf("%d of 100 calls failed, want 50", len(failed))
	}
	for i, k := range failed {
		if k != 2*(i+1) {
			t.Fatalf("failed calls %v are not every second call", failed)
		}
	}
	if f.Successes(EndpointLogin) != 50 {
		t.Errorf("successes = %d", f.Successes(EndpointLogin))
	}

	// Awkward rates are exact too.
	g := NewFake(Options{})
	g.Inject(EndpointRefresh, Fault{Status: 500, Rate: 0.29})
	n := 0
	for k := 0; k < 100; k++ {
		if refresh(g, "x").status == 500 {
			n++
		}
	}
	if n != 29 {
		t.Errorf("Rate 0.29 failed %d of 100 calls", n)
	}

	// A Rate fault that is not this call's turn lets the next fault match.
	h := NewFake(Options{})
	h.Inject(EndpointLogin, Fault{Status: 500, Rate: 0.5})
	h.Inject(EndpointLogin, Fault{Status: 504})
	got := []int{login(h, DemoUsername, DemoPassword).status, login(h, DemoUsername, DemoPassword).status}
	if got[0] != 504 || got[1] != 500 {
		t.Errorf("statuses = %v, want [504 500]", got)
	}

	// Rate with Times: fails calls 2 and 4, then the fault is gone.
	i := NewFake(Options{})
	i.Inject(EndpointLogin, Fault{Status: 500, Rate: 0.5, Times: 2})
	var statuses []int
	for k := 0; k < 6; k++ {
		statuses = append(statuses, login(i, DemoUsername, DemoPassword).status)
	}
	if want := []int{200, 500, 200, 500, 200, 200}; !equalInts(statuses, want) {
		t.Errorf("statuses = %v, want %v", statuses, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestFaultDelay(t *testing.T) {
	s := NewServer(Options{})
	defer s.Close()
	c := s.Client()
	ctx := context.Background()

	// Delay alone: late, then normal.
	s.Inject(EndpointLogin, Fault{Delay: 150 * time.Millisecond, Times: 1})
	start := time.Now()
	r, err := post(ctx, c, s.URL+PathLogin, map[string]string{"username": DemoUsername, "password": DemoPassword})
	if err != nil || r.status != 200 {
		t.Fatalf("delayed login: %v %d", err, r.status)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("answered after %v, before the delay", el)
	}

	// Delay with a status: late, then the status.
	s.Inject(EndpointLogin, Fault{Delay: 100 * time.Millisecond, Status: 504, Code: "GATEWAY_TIMEOUT", Times: 1})
	start = time.Now()
	r, err = post(ctx, c, s.URL+PathLogin, map[string]string{"username": DemoUsername, "password": DemoPassword})
	if err != nil {
		t.Fatal(err)
	}
	r.envelope(t, 504, "GATEWAY_TIMEOUT")
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Errorf("answered after %v, before the delay", el)
	}

	// A long delay honours the request context: the handler returns early.
	s.Inject(EndpointLogin, Fault{Delay: time.Hour, Times: 1})
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = post(cctx, c, s.URL+PathLogin, map[string]string{"username": DemoUsername, "password": DemoPassword})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("cancelled request took %v", el)
	}
	// The server side gave up too: its handler returns without waiting out the delay.
	deadline := time.Now().Add(3 * time.Second)
	for inflight(s) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the delayed handler still runs after the client cancelled")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start = time.Now()
	s.Stop()
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Stop took %v: the delayed handler did not return on cancel", el)
	}
	if s.Successes(EndpointLogin) != 1 {
		t.Errorf("successes = %d, want 1", s.Successes(EndpointLogin))
	}
}

func TestFaultDelayEndsOnStop(t *testing.T) {
	s := NewServer(Options{})
	defer s.Close()
	s.Inject(EndpointLogin, Fault{Delay: time.Hour})
	errc := make(chan error, 1)
	go func() {
		_, err := post(context.Background(), s.Client(), s.URL+PathLogin, map[string]string{"username": "a", "password": "b"})
		errc <- err
	}()
	for s.Calls(EndpointLogin) == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	s.Stop()
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Stop took %v with a delayed request in flight", el)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("the delayed request got an answer from a stopped server")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the delayed request still hangs after Stop")
	}
}

func TestFaultReset(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		name := "http"
		if tlsOn {
			name = "https"
		}
		t.Run(name, func(t *testing.T) {
			var s *Server
			if tlsOn {
				s = NewTLSServer(Options{})
			} else {
				s = NewServer(Options{})
			}
			defer s.Close()
			s.Inject(EndpointLogin, Fault{Reset: true, Times: 1})
			_, err := post(context.Background(), s.Client(), s.URL+PathLogin, map[string]string{"username": DemoUsername, "password": DemoPassword})
			if err == nil {
				t.Fatal("no error from a reset connection")
			}
			if s.Calls(EndpointLogin) != 1 || s.Successes(EndpointLogin) != 0 {
				t.Errorf("calls/successes = %d/%d", s.Calls(EndpointLogin), s.Successes(EndpointLogin))
			}
			r, err := post(context.Background(), s.Client(), s.URL+PathLogin, map[string]string{"username": DemoUsername, "password": DemoPassword})
			if err != nil || r.status != 200 {
				t.Fatalf("after the reset: %v %d", err, r.status)
			}
		})
	}
}

func TestFaultMalformed(t *testing.T) {
	f := NewFake(Options{})
	f.Inject(EndpointRefresh, Fault{Malformed: true, Times: 1})
	r := refresh(f, "anything")
	if r.status != 200 {
		t.Fatalf("status %d", r.status)
	}
	if json.Valid(r.body) {
		t.Errorf("malformed body is valid JSON: %s", r.body)
	}
	if f.Successes(EndpointRefresh) != 1 {
		t.Errorf("a 200 answer is not counted as a success")
	}
}

func TestFaultMFAAndPasswordReset(t *testing.T) {
	for _, c := range []struct {
		name  string
		fault Fault
		field string
	}{
		{"mfa", Fault{MFARequired: true, Times: 1}, "mfaRequired"},
		{"password reset", Fault{PasswordResetRequired: true, Times: 1}, "passwordResetRequired"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := NewFake(Options{})
			f.Inject(EndpointLogin, c.fault)
			r := login(f, DemoUsername, DemoPassword)
			if r.status != 200 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			var raw map[string]json.RawMessage
			r.decode(t, &raw)
			if string(raw["refreshJwt"]) != "null" {
				t.Errorf("refreshJwt = %s, want null", raw["refreshJwt"])
			}
			if string(raw[c.field]) != "true" {
				t.Errorf("%s = %s, want true", c.field, raw[c.field])
			}
			var l specLogin
			r.decode(t, &l)
			if l.AccessJwt == nil || l.AccessJwt.Token == "" || l.UserID == "" {
				t.Errorf("required fields missing: %s", r.body)
			}
			if f.AccessTokenValid(l.AccessJwt.Token) {
				t.Error("the limited access token of an unfinished login is valid")
			}
			if len(f.IssuedRefreshTokens()) != 0 {
				t.Error("a refresh token was issued")
			}
			// Bad credentials still fail first.
			f.Inject(EndpointLogin, c.fault)
			login(f, DemoUsername, "wrong").envelope(t, 403, "LOGIN_FAILED")
			// Next login is normal.
			mustLogin(t, f, DemoUsername, DemoPassword)
		})
	}
}

// Times is exact under concurrency.
func TestFaultTimesConcurrent(t *testing.T) {
	f := NewFake(Options{})
	f.Inject(EndpointRefresh, Fault{Status: 500, Times: 10})
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := refresh(f, "x").status
			mu.Lock()
			counts[st]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if counts[500] != 10 || counts[403] != 90 {
		t.Errorf("statuses = %v, want 10x500 and 90x403", counts)
	}
}

func TestInjectCopiesDetails(t *testing.T) {
	f := NewFake(Options{})
	d := map[string]any{"timeLeftInMinutes": 1}
	f.Inject(EndpointLogin, Fault{Status: 401, Code: "USER_LOCKED_WITH_TIME", Details: d})
	d["timeLeftInMinutes"] = 99
	e := login(f, DemoUsername, DemoPassword).envelope(t, 401, "USER_LOCKED_WITH_TIME")
	if e.Details["timeLeftInMinutes"] != float64(1) {
		t.Errorf("details = %v", e.Details)
	}
	if strings.Contains(e.Message, DemoPassword) {
		t.Error("message leaks the password")
	}
}

// inflight is the number of handlers running in s.
func inflight(s *Server) int {
	s.mu.Lock()
	run := s.run
	s.mu.Unlock()
	if run == nil {
		return 0
	}
	run.mu.Lock()
	defer run.mu.Unlock()
	return run.inflight
}
