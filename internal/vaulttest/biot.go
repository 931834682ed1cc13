package vaulttest

import "github.com/biot-med/vault-plugin-secrets-biot/internal/biotfake"

// UserConfig is a config for the fake's demo user (url, username, password,
// and ca_cert for a TLS fake).
func UserConfig(srv *biotfake.Server) map[string]any {
	return withCA(srv, map[string]any{
		"url":      srv.URL,
		"username": biotfake.DemoUsername,
		"password": biotfake.DemoPassword,
	})
}

// ServiceConfig is a config for the fake's demo service user (url,
// service_id, secret_key, and ca_cert for a TLS fake).
func ServiceConfig(srv *biotfake.Server) map[string]any {
	return withCA(srv, map[string]any{
		"url":        srv.URL,
		"service_id": biotfake.DemoServiceID,
		"secret_key": biotfake.DemoServiceSecret,
	})
}

func withCA(srv *biotfake.Server, m map[string]any) map[string]any {
	if ca := srv.CACertPEM(); ca != nil {
		m["ca_cert"] = string(ca)
	}
	return m
}
