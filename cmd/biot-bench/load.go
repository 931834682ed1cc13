package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// target is one Vault endpoint under load.
type target struct {
	name   string // short name for the tables, e.g. "biot/creds"
	method string
	path   string // e.g. /v1/biot/creds
	body   []byte // request body (POST), nil for none
}

func (t target) String() string { return t.method + " " + t.path }

// newTransport is a keep-alive HTTP/1.1 transport with room for every client's
// connection to stay idle between requests.
func newTransport(clients int) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4 * clients,
		MaxIdleConnsPerHost: 4 * clients,
		IdleConnTimeout:     5 * time.Minute,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
}

// body is a request body that can be rewound for the next request without
// allocating: a bytes.Reader with a no-op Close.
type body struct{ bytes.Reader }

func (*body) Close() error { return nil }

// worker is one closed-loop client: it sends its one pre-built request, waits
// for the whole answer, records the latency and sends it again.
type worker struct {
	rt      http.RoundTripper
	req     *http.Request
	payload []byte
	body    body

	lat      []time.Duration // this segment's latencies
	errs     int64
	firstErr string
}

func newWorker(rt http.RoundTripper, base *url.URL, token string, t target, capacity int) (*worker, error) {
	u := *base
	u.Path = t.path
	req, err := http.NewRequest(t.method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", token)
	w := &worker{rt: rt, req: req, payload: t.body, lat: make([]time.Duration, 0, capacity)}
	if t.body != nil {
		req.Header.Set("Content-Type", "application/json")
		req.ContentLength = int64(len(t.body))
		req.Body = &w.body
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(t.body)), nil }
	}
	return w, nil
}

// do sends the request once and reads the whole answer.
func (w *worker) do() {
	if w.payload != nil {
		w.body.Reset(w.payload)
	}
	start := time.Now()
	resp, err := w.rt.RoundTrip(w.req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
	}
	w.lat = append(w.lat, time.Since(start))
	if err != nil {
		w.errs++
		if w.firstErr == "" {
			w.firstErr = err.Error()
		}
	}
}

// segment is one timed run of every worker against one target.
type segment struct {
	requests int64
	elapsed  time.Duration // start to the last answer
	lat      []time.Duration
	errs     int64
	firstErr string
	cpu      cpuSample // CPU used by the processes during the segment
}

// run drives the workers for d: all start together, each stops after the
// answer in flight when d ends. It returns what they did.
func run(workers []*worker, d time.Duration, probe *cpuProbe) segment {
	var stop atomic.Bool
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for _, w := range workers {
		w.lat = w.lat[:0]
		w.errs, w.firstErr = 0, ""
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			for !stop.Load() {
				w.do()
			}
		}()
	}
	before := probe.sample()
	start := time.Now()
	close(gate)
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	wg.Wait()
	timer.Stop()
	s := segment{elapsed: time.Since(start)}
	s.cpu = probe.sample().sub(before)
	for _, w := range workers {
		s.requests += int64(len(w.lat))
		s.lat = append(s.lat, w.lat...)
		s.errs += w.errs
		if s.firstErr == "" {
			s.firstErr = w.firstErr
		}
	}
	return s
}

// result adds up a target's segments.
type result struct {
	target   target
	requests int64
	elapsed  time.Duration
	lat      []time.Duration
	errs     int64
	firstErr string
	cpu      cpuSample
	rounds   []float64 // req/s of each round
}

func (r *result) add(s segment) {
	r.requests += s.requests
	r.elapsed += s.elapsed
	r.lat = append(r.lat, s.lat...)
	r.errs += s.errs
	if r.firstErr == "" {
		r.firstErr = s.firstErr
	}
	r.cpu = r.cpu.add(s.cpu)
	r.rounds = append(r.rounds, float64(s.requests)/s.elapsed.Seconds())
}

func (r *result) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.requests) / r.elapsed.Seconds()
}

// quantiles returns p50, p99 and max of the latencies (sorting them).
func (r *result) quantiles() (p50, p99, maxLat time.Duration) {
	if len(r.lat) == 0 {
		return 0, 0, 0
	}
	slices.Sort(r.lat)
	at := func(q float64) time.Duration {
		i := int(q*float64(len(r.lat))+0.5) - 1
		return r.lat[min(max(i, 0), len(r.lat)-1)]
	}
	return at(0.50), at(0.99), r.lat[len(r.lat)-1]
}

// perRequest is the CPU time a process spent per request, in microseconds.
func perRequest(cpu time.Duration, requests int64) string {
	if requests == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(cpu.Microseconds())/float64(requests), 'f', 0, 64)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s"
	case d >= 10*time.Millisecond:
		return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) + "ms"
	default:
		return strconv.FormatFloat(float64(d)/1e6, 'f', 2, 64) + "ms"
	}
}
