package biotfake

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Server is a Fake served on 127.0.0.1, over plain HTTP or TLS. Unlike
// httptest.Server it can be stopped (new connections are refused) and
// started again on the same address.
type Server struct {
	*Fake
	URL string // base URL without trailing slash, e.g. "https://127.0.0.1:41234"

	addr   string
	tlsCfg *tls.Config // nil for plain HTTP
	caPEM  []byte

	mu     sync.Mutex
	closed bool
	run    *running // nil while stopped
	client *http.Client
}

// running is one listening period of a Server, from Start to Stop.
type running struct {
	srv    *http.Server
	cancel context.CancelFunc
	done   chan struct{} // closed when Serve returns

	conns atomic.Int64 // open connections

	mu       sync.Mutex
	inflight int
	stopping bool
	idle     chan struct{} // closed when stopping and inflight reaches 0
}

// NewServer starts a Fake on a plain-HTTP listener on 127.0.0.1.
func NewServer(opts Options) *Server {
	return newServer(opts, nil, nil)
}

// NewTLSServer starts a Fake on an HTTPS listener on 127.0.0.1, with a
// certificate for 127.0.0.1, ::1 and localhost signed by a fresh CA (see
// CACertPEM). The server speaks HTTP/1.1 only, so the Reset fault works.
func NewTLSServer(opts Options) *Server {
	caPEM, cert, err := GenerateCA([]string{"127.0.0.1", "::1", "localhost"})
	if err != nil {
		panic("biotfake: generating certificates: " + err.Error())
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
	return newServer(opts, cfg, caPEM)
}

func newServer(opts Options, cfg *tls.Config, caPEM []byte) *Server {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic("biotfake: listening on 127.0.0.1: " + err.Error())
	}
	s := &Server{Fake: NewFake(opts), addr: ln.Addr().String(), tlsCfg: cfg, caPEM: caPEM}
	scheme := "http"
	if cfg != nil {
		scheme = "https"
	}
	s.URL = scheme + "://" + s.addr
	s.mu.Lock()
	s.serve(ln)
	s.mu.Unlock()
	return s
}

// CACertPEM is the PEM of the CA certificate a client must trust to reach a
// TLS server; nil for plain HTTP.
func (s *Server) CACertPEM() []byte {
	if s.caPEM == nil {
		return nil
	}
	return append([]byte(nil), s.caPEM...)
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.addr }

// Client returns an HTTP client for the server: it trusts CACertPEM (and
// nothing else) for a TLS server. The same client is returned every time.
func (s *Server) Client() *http.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		tr := &http.Transport{
			Proxy:               nil,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
			ForceAttemptHTTP2:   false,
		}
		if s.caPEM != nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(s.caPEM)
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		s.client = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	return s.client
}

// Stop closes the listener, so new connections are refused, and closes the
// open connections; delayed requests in progress return early. It waits
// (briefly) for running handlers to finish. Stopping a stopped server does
// nothing.
//
// A client that had a kept-alive connection usually notices it closed before
// its next request, which then dials and is refused; if it does not, that one
// request fails with EOF or a reset instead. Client() drops its idle
// connections on Stop, so it always sees the refusal.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

// Start listens again on the same address (so URL stays valid) and serves.
// Starting a running or closed server does nothing. It panics if the address
// cannot be had back within a few seconds; TryStart returns the error instead.
func (s *Server) Start() {
	if err := s.TryStart(); err != nil {
		panic(err.Error())
	}
}

// TryStart is Start returning an error instead of panicking.
func (s *Server) TryStart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.run != nil {
		return nil
	}
	var ln net.Listener
	var err error
	deadline := time.Now().Add(3 * time.Second)
	for {
		ln, err = net.Listen("tcp", s.addr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("biotfake: listening again on %s: %w", s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.serve(ln)
	return nil
}

// Running reports whether the server is listening.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.run != nil
}

// Close stops the server for good. It is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	s.stopLocked()
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
}

// serve starts serving on ln. s.mu must be held.
func (s *Server) serve(ln net.Listener) {
	ctx, cancel := context.WithCancel(context.Background())
	run := &running{cancel: cancel, done: make(chan struct{}), idle: make(chan struct{})}
	run.srv = &http.Server{
		Handler:           run.track(s.Fake),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No HTTP/2: the Reset fault needs to hijack the connection.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(io.Discard, "", 0),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				run.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				run.conns.Add(-1)
			}
		},
	}
	if s.tlsCfg != nil {
		ln = tls.NewListener(ln, s.tlsCfg)
	}
	s.run = run
	go func() {
		defer close(run.done)
		_ = run.srv.Serve(ln) // returns when Stop closes the listener
	}()
}

// stopLocked stops serving. s.mu must be held.
func (s *Server) stopLocked() {
	run := s.run
	if run == nil {
		return
	}
	s.run = nil
	hadConns := run.conns.Load() > 0
	_ = run.srv.Close() // closes the listener and every open connection
	run.cancel()        // ends delayed handlers
	<-run.done
	run.mu.Lock()
	run.stopping = true
	if run.inflight == 0 {
		close(run.idle)
	}
	run.mu.Unlock()
	select {
	case <-run.idle:
	case <-time.After(5 * time.Second):
	}
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
	if hadConns {
		// Give clients' transports a moment to see their kept-alive
		// connections closed, so their next request dials (and is refused)
		// rather than failing on a dead pooled connection.
		time.Sleep(20 * time.Millisecond)
	}
}

// track wraps h to count handlers in flight, so Stop can wait for them.
func (run *running) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		run.mu.Lock()
		if run.stopping {
			run.mu.Unlock()
			panic(http.ErrAbortHandler)
		}
		run.inflight++
		run.mu.Unlock()
		defer func() {
			run.mu.Lock()
			run.inflight--
			if run.inflight == 0 && run.stopping {
				close(run.idle)
			}
			run.mu.Unlock()
		}()
		h.ServeHTTP(w, r)
	})
}
