package biotfake

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestServerStopStart(t *testing.T) {
	s := NewServer(Options{})
	defer s.Close()
	if !strings.HasPrefix(s.URL, "http://127.0.0.1:") || strings.HasSuffix(s.URL, "/") {
		t.Fatalf("URL = %q", s.URL)
	}
	if s.CACertPEM() != nil {
		t.Error("plain server has a CA")
	}
	ctx := context.Background()
	body := map[string]string{"username": DemoUsername, "password": DemoPassword}
	r, err := post(ctx, s.Client(), s.URL+PathLogin, body)
	if err != nil || r.status != 200 {
		t.Fatalf("login: %v %d", err, r.status)
	}
	var l specLogin
	r.decode(t, &l)

	s.Stop()
	s.Stop() // idempotent
	if s.Running() {
		t.Error("Running after Stop")
	}
	_, err = post(ctx, s.Client(), s.URL+PathLogin, body)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("err = %v, want connection refused", err)
	}
	_, err = net.DialTimeout("tcp", s.Addr(), time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial err = %v, want connection refused", err)
	}

	s.Start()
	s.Start() // idempotent
	r, err = post(ctx, s.Client(), s.URL+"/ums/v2/users/token/refresh", map[string]string{"refreshToken": l.RefreshJwt.Token})
	if err != nil || r.status != 200 {
		t.Fatalf("refresh after restart: %v %d %s", err, r.status, r.body)
	}

	s.Close()
	s.Close()
	s.Start() // no-op after Close
	if s.Running() {
		t.Error("Start revived a closed server")
	}
	if _, err := post(ctx, s.Client(), s.URL+PathLogin, body); err == nil {
		t.Error("closed server answered")
	}
}

func TestServerStopClosesOpenConnections(t *testing.T) {
	s := NewServer(Options{})
	defer s.Close()
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// An idle keep-alive connection with a request half-sent.
	if _, err := conn.Write([]byte("POST /ums/v2/users/login HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	s.Stop()
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 1)
	if _, err := conn.Read(buf); err == nil {
		t.Error("connection still open after Stop")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("connection not closed by Stop")
	}
}

func TestTLSServer(t *testing.T) {
	s := NewTLSServer(Options{})
	defer s.Close()
	if !strings.HasPrefix(s.URL, "https://127.0.0.1:") {
		t.Fatalf("URL = %q", s.URL)
	}
	pem := s.CACertPEM()
	if len(pem) == 0 {
		t.Fatal("no CA PEM")
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA PEM does not parse")
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	body := map[string]string{"username": DemoUsername, "password": DemoPassword}
	r, err := post(context.Background(), c, s.URL+PathLogin, body)
	if err != nil || r.status != 200 {
		t.Fatalf("login over TLS: %v %d", err, r.status)
	}

	// The same through "localhost".
	port := s.URL[strings.LastIndex(s.URL, ":")+1:]
	r, err = post(context.Background(), c, "https://localhost:"+port+PathLogin, body)
	if err == nil && r.status != 200 {
		t.Errorf("localhost: %d", r.status)
	} else if err != nil && !strings.Contains(err.Error(), "refused") {
		// localhost may resolve to ::1 first, where nothing listens;
		// a certificate error would be a bug.
		var ue x509.UnknownAuthorityError
		var he x509.HostnameError
		if errors.As(err, &ue) || errors.As(err, &he) {
			t.Errorf("localhost: %v", err)
		}
	}

	// HTTP/1.1 only.
	conn, err := tls.Dial("tcp", s.Addr(), &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p == "h2" {
		t.Error("server negotiated h2")
	}
	conn.Close()

	// A client that does not trust the CA fails.
	plain := &http.Client{Transport: &http.Transport{}}
	defer plain.CloseIdleConnections()
	_, err = post(context.Background(), plain, s.URL+PathLogin, body)
	var ue x509.UnknownAuthorityError
	if !errors.As(err, &ue) {
		t.Errorf("untrusting client err = %v, want unknown authority", err)
	}

	// TLS survives Stop/Start.
	s.Stop()
	c.CloseIdleConnections() // see Stop: a pooled connection would fail with EOF, not a refusal
	if _, err := post(context.Background(), c, s.URL+PathLogin, body); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("TLS after Stop: %v", err)
	}
	s.Start()
	if r, err := post(context.Background(), c, s.URL+PathLogin, body); err != nil || r.status != 200 {
		t.Errorf("TLS after Start: %v", err)
	}
}

func TestGenerateCA(t *testing.T) {
	caPEM, cert, err := GenerateCA([]string{"127.0.0.1", "::1", "localhost", "biot.sandbox.test"})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA PEM does not parse")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "::1", "localhost", "biot.sandbox.test"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("verify for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.0.0.1"}); err == nil {
		t.Error("certificate verifies for 10.0.0.1")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: x509.NewCertPool(), DNSName: "127.0.0.1"}); err == nil {
		t.Error("certificate verifies without its CA")
	}
	if cert.Leaf == nil || cert.PrivateKey == nil {
		t.Error("tls.Certificate lacks Leaf or PrivateKey")
	}
	// Usable by a real TLS server.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool})
	if err != nil {
		t.Fatalf("handshake with GenerateCA's certificate: %v", err)
	}
	conn.Close()
}

func TestConcurrentLogins(t *testing.T) {
	const n = 1000
	s := NewServer(Options{})
	defer s.Close()
	f := s.Fake
	users := make([]string, 10)
	for i := range users {
		users[i] = "user" + string(rune('a'+i)) + "@example.com"
		f.AddUser(users[i], "pw-"+users[i])
	}
	tr := &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: 0}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 2 * time.Minute}

	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var tokens []string
	var errs []error
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			u := users[i%len(users)]
			r, err := post(context.Background(), c, s.URL+PathLogin, map[string]string{"username": u, "password": "pw-" + u})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			if r.status != 200 {
				errs = append(errs, errors.New(string(r.body)))
				return
			}
			var l specLogin
			if err := jsonUnmarshal(r.body, &l); err != nil || l.AccessJwt == nil || l.RefreshJwt == nil {
				errs = append(errs, errors.New("bad body"))
				return
			}
			tokens = append(tokens, l.AccessJwt.Token, l.RefreshJwt.Token)
		}(i)
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d logins failed, first: %v", len(errs), n, errs[0])
	}
	seen := make(map[string]bool, len(tokens))
	for _, tok := range tokens {
		if seen[tok] {
			t.Fatal("duplicate token")
		}
		seen[tok] = true
	}
	if len(seen) != 2*n {
		t.Errorf("%d distinct tokens, want %d", len(seen), 2*n)
	}
	if f.Calls(EndpointLogin) != n || f.Successes(EndpointLogin) != n {
		t.Errorf("calls/successes = %d/%d", f.Calls(EndpointLogin), f.Successes(EndpointLogin))
	}
	if len(f.IssuedAccessTokens()) != n || len(f.IssuedRefreshTokens()) != n {
		t.Errorf("issued %d/%d", len(f.IssuedAccessTokens()), len(f.IssuedRefreshTokens()))
	}
	for _, tok := range f.IssuedAccessTokens() {
		if !seen[tok] || !f.AccessTokenValid(tok) {
			t.Fatal("an issued access token was not handed out or is invalid")
		}
	}
}

// Racing refreshes of one token: exactly one wins.
func TestConcurrentRefreshSameToken(t *testing.T) {
	f := NewFake(Options{})
	l := mustLogin(t, f, DemoUsername, DemoPassword)
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[int]int{}
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := refresh(f, l.RefreshJwt.Token).status
			mu.Lock()
			counts[st]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if counts[200] != 1 || counts[403] != 49 {
		t.Errorf("statuses = %v, want one 200 and 49 403", counts)
	}
}

// Everything at once, for the race detector.
func TestConcurrentMixed(t *testing.T) {
	clock := NewClock(t0)
	s := NewServer(Options{Now: clock.Now})
	defer s.Close()
	c := s.Client()
	var wg sync.WaitGroup
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx := context.Background()
			r, err := post(ctx, c, s.URL+PathLogin, map[string]string{"username": DemoUsername, "password": DemoPassword})
			if err != nil || r.status != 200 {
				return // faults are flying
			}
			var l specLogin
			if jsonUnmarshal(r.body, &l) != nil || l.RefreshJwt == nil {
				return
			}
			_, _ = post(ctx, c, s.URL+PathRefresh, map[string]string{"refreshToken": l.RefreshJwt.Token})
			_, _ = post(ctx, c, s.URL+PathLogout, map[string]string{"refreshToken": l.RefreshJwt.Token})
			_, _ = post(ctx, c, s.URL+PathServiceLogin, map[string]string{"id": DemoServiceID, "secretKey": DemoServiceSecret})
			req, _ := http.NewRequest(http.MethodGet, s.URL+PathSelf, nil)
			req.Header.Set("Authorization", "Bearer "+l.AccessJwt.Token)
			if res, err := c.Do(req); err == nil {
				res.Body.Close()
			}
		}(i)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			switch i % 8 {
			case 0:
				s.Inject(EndpointLogin, Fault{Status: 500, Times: 1})
			case 1:
				s.RevokeAllRefreshTokens()
			case 2:
				s.SetPassword(DemoUsername, DemoPassword)
			case 3:
				_ = s.IssuedAccessTokens()
				_ = s.IssuedRefreshTokens()
			case 4:
				clock.Advance(time.Second)
			case 5:
				s.ClearFaults()
			case 6:
				_ = s.Calls(EndpointLogin) + s.Successes(EndpointRefresh)
			case 7:
				s.AddUser("x"+string(rune('a'+i%26))+"@example.com", "pw")
			}
		}(i)
	}
	wg.Wait()
	if s.Calls(EndpointLogin) != 40 {
		t.Errorf("login calls = %d, want 40", s.Calls(EndpointLogin))
	}
}
