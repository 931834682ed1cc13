package biotfake

import (
	"maps"
	"math"
	"net/http"
	"time"
)

// Fault is a failure injected into one endpoint. See Inject.
type Fault struct {
	Status     int            // if >0: answer this HTTP status with BioT's error envelope
	Code       string         // BioT error code for the envelope; a default per status and endpoint if empty
	Message    string         // envelope message; a default per code if empty
	Details    map[string]any // envelope details, e.g. {"timeLeftInMinutes": 5} for USER_LOCKED_WITH_TIME
	RetryAfter string         // if set, a Retry-After header (use with Status 429)
	Delay      time.Duration  // wait this long before answering (or before proceeding normally if nothing else is set); returns early if the request context is cancelled
	Reset      bool           // hijack the connection and close it (RST) without answering
	Malformed  bool           // answer 200 with a body that is not valid JSON
	// MFARequired makes login (and refresh) answer 200 with mfaRequired=true
	// and refreshJwt null, once the credentials (refresh token) check out.
	MFARequired bool
	// PasswordResetRequired makes login (and refresh) answer 200 with
	// passwordResetRequired=true and refreshJwt null, once the credentials
	// (refresh token) check out.
	PasswordResetRequired bool
	Times                 int     // 0 = applies until ClearFaults; n>0 = applies to the next n matching calls, then is removed
	Rate                  float64 // 0 (or >=1) = every call; 0<Rate<1 = call k (1-based, per fault) matches when floor(k*Rate) advances
}

type faultRec struct {
	ep        Endpoint
	f         Fault
	seen      int64 // matching calls seen, for Rate
	remaining int   // for Times
}

// Inject adds a fault for one endpoint. Faults are checked in order of
// injection after the call is counted; the first one that matches (right
// endpoint and, with Rate, this call's turn) applies, and only that one.
func (f *Fake) Inject(ep Endpoint, fault Fault) {
	fault.Details = maps.Clone(fault.Details)
	f.fmu.Lock()
	defer f.fmu.Unlock()
	f.faults = append(f.faults, &faultRec{ep: ep, f: fault, remaining: fault.Times})
	f.nfaults.Store(int64(len(f.faults)))
}

// ClearFaults removes every fault.
func (f *Fake) ClearFaults() {
	f.fmu.Lock()
	defer f.fmu.Unlock()
	f.faults = nil
	f.nfaults.Store(0)
}

// pickFault returns the fault that applies to this call of ep, if any.
func (f *Fake) pickFault(ep Endpoint) (Fault, bool) {
	if f.nfaults.Load() == 0 {
		return Fault{}, false
	}
	f.fmu.Lock()
	defer f.fmu.Unlock()
	for i, r := range f.faults {
		if r.ep != ep {
			continue
		}
		r.seen++
		if rate := r.f.Rate; rate > 0 && rate < 1 {
			// The small epsilon keeps k*rate from landing just below an
			// integer (0.29*100 = 28.999999999999996).
			const eps = 1e-9
			if math.Floor(float64(r.seen)*rate+eps) == math.Floor(float64(r.seen-1)*rate+eps) {
				continue
			}
		}
		if r.f.Times > 0 {
			r.remaining--
			if r.remaining <= 0 {
				f.faults = append(f.faults[:i:i], f.faults[i+1:]...)
				f.nfaults.Store(int64(len(f.faults)))
			}
		}
		return r.f, true
	}
	return Fault{}, false
}

// defaultCode is the BioT error code for a status when a Fault gives none.
func defaultCode(ep Endpoint, status int) string {
	switch status {
	case http.StatusBadRequest:
		return "BAD_REQUEST"
	case http.StatusUnauthorized:
		switch ep {
		case EndpointLogin:
			return "USER_LOCKED"
		case EndpointServiceLogin:
			return "SERVICE_LOCKED"
		}
		return "TOKEN_NOT_VALID"
	case http.StatusForbidden:
		switch ep {
		case EndpointRefresh, EndpointLogout:
			return "REFRESH_TOKEN_NOT_VALID"
		case EndpointLogin, EndpointServiceLogin:
			return "LOGIN_FAILED"
		}
		return "ACCESS_DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusTooManyRequests:
		return "TOO_MANY_REQUESTS"
	case http.StatusInternalServerError:
		return "INTERNAL_SERVER_ERROR"
	case http.StatusBadGateway:
		return "BAD_GATEWAY"
	case http.StatusServiceUnavailable:
		return "SERVICE_UNAVAILABLE"
	case http.StatusGatewayTimeout:
		return "GATEWAY_TIMEOUT"
	}
	return "ERROR"
}

// defaultMessage is the envelope message for a code when none is given.
func defaultMessage(code string, status int) string {
	switch code {
	case "LOGIN_FAILED":
		return "Login failed: wrong username or password"
	case "USER_LOCKED":
		return "User is locked"
	case "USER_LOCKED_WITH_TIME":
		return "User is locked, try again later"
	case "SERVICE_LOCKED":
		return "Service user is locked"
	case "REFRESH_TOKEN_NOT_VALID":
		return "Refresh token is not valid"
	case "TOKEN_NOT_VALID":
		return "Token is not valid"
	case "ACCESS_DENIED":
		return "Access denied"
	case "INTERNAL_SERVER_ERROR":
		return "Internal server error"
	case "GATEWAY_TIMEOUT":
		return "Gateway timeout"
	case "MISSING_PARAMETERS":
		return "Missing parameters"
	case "BAD_REQUEST":
		return "Bad request"
	case "NOT_FOUND":
		return "Not found"
	case "METHOD_NOT_ALLOWED":
		return "Method not allowed"
	case "TOO_MANY_REQUESTS":
		return "Too many requests"
	}
	if t := http.StatusText(status); t != "" {
		return t
	}
	return "Error"
}
