package biotfake_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"
)

func Example() {
	s := biotfake.NewTLSServer(biotfake.Options{})
	defer s.Close()

	// Fail the first login the way a locked BioT user does.
	s.Inject(biotfake.EndpointLogin, biotfake.Fault{Status: 401, Code: "USER_LOCKED_WITH_TIME", Times: 1})

	login := func() int {
		body, _ := json.Marshal(map[string]string{"username": biotfake.DemoUsername, "password": biotfake.DemoPassword})
		res, err := s.Client().Post(s.URL+"/ums/v2/users/login", "application/json", bytes.NewReader(body))
		if err != nil {
			return 0
		}
		res.Body.Close()
		return res.StatusCode
	}
	fmt.Println(login(), login())
	fmt.Println(s.Calls(biotfake.EndpointLogin), s.Successes(biotfake.EndpointLogin))

	s.Stop() // connection refused until Start
	fmt.Println(login())
	s.Start()
	fmt.Println(login() == http.StatusOK)
	// Output:
	// 401 200
	// 2 1
	// 0
	// true
}
