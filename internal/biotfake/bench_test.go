package biotfake

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func benchRequest(b *testing.B, f *Fake, method, path, body string, hdr ...string) {
	var r *http.Request
	if body != "" {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	} else {
		r = httptest.NewRequest(method, path, nil)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	f.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		b.Fatalf("%s %s: %d %s", method, path, w.Code, w.Body)
	}
}

func BenchmarkLogin(b *testing.B) {
	f := NewFake(Options{})
	body := `{"username":"` + DemoUsername + `","password":"` + DemoPassword + `"}`
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchRequest(b, f, http.MethodPost, PathLogin, body)
		}
	})
}

func BenchmarkSelf(b *testing.B) {
	f := NewFake(Options{})
	l := mustLogin(b, f, DemoUsername, DemoPassword)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchRequest(b, f, http.MethodGet, PathSelf, "", "Authorization", "Bearer "+l.AccessJwt.Token)
		}
	})
}

func BenchmarkFaultedLogin(b *testing.B) {
	f := NewFake(Options{})
	f.Inject(EndpointLogin, Fault{Status: 503})
	req := `{"username":"a","password":"b"}`
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, PathLogin, bytes.NewBufferString(req))
			r.Header.Set("Content-Type", "application/json")
			f.ServeHTTP(w, r)
			if w.Code != 503 {
				b.Fatal(w.Code)
			}
		}
	})
}

func BenchmarkLoginOverHTTP(b *testing.B) {
	s := NewServer(Options{})
	defer s.Close()
	c := s.Client()
	body := map[string]string{"username": DemoUsername, "password": DemoPassword}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := post(context.Background(), c, s.URL+PathLogin, body)
			if err != nil || r.status != 200 {
				b.Fatal(err, r.status)
			}
		}
	})
}
