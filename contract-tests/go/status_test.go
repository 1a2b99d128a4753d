// Package contracttests checks the running Lake, Stream and Nexus from Go, through stubs
// generated from proto/ (see gen.sh): a client we did not write in Python, speaking only
// the published contract.
//
// Clients reach the services through Nexus's gRPC entry (ENTRY_ADDR, default
// 127.0.0.1:50050) with a credential: every call there carries the API key in
// CONTRACT_API_KEY as `x-api-key` metadata (run.sh sets it from `datapunk admin-key`).
// The services' own ports (LAKE_ADDR, STREAM_ADDR, NEXUS_ADDR; defaults 127.0.0.1:50051,
// 50052, 50053) accept only Nexus's service tokens: they are called directly only for
// what stays public there (health, StatusService) and to check that the rest is refused.
// Run with contract-tests/run.sh, or after ./gen.sh with
// `CONTRACT_API_KEY=$(datapunk admin-key) go test ./...`.
package contracttests

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	commonv1 "datapunk.dev/contracttests/internal/gen/datapunk/common/v1"
	lakev1 "datapunk.dev/contracttests/internal/gen/datapunk/lake/v1"
	nexusv1 "datapunk.dev/contracttests/internal/gen/datapunk/nexus/v1"
	streamv1 "datapunk.dev/contracttests/internal/gen/datapunk/stream/v1"
)

// errorDomain is the ErrorInfo.domain of every error Datapunk returns.
const errorDomain = "datapunk.dev"

// engineName is the contract's pattern for an engine name.
var engineName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// credentials matches a URL's user:password@ part, which an endpoint must not show.
var credentials = regexp.MustCompile(`//[^/@:]*:[^/@]+@`)

// getStatus calls one service's GetStatus; the three services have distinct generated
// request types with the same fields.
type getStatus func(ctx context.Context, conn *grpc.ClientConn, engines []string,
	probeTimeout *durationpb.Duration) (proto.Message, *commonv1.ServiceStatus, error)

type target struct {
	name    string // the ServiceStatus.service the contract promises
	envVar  string
	addr    string // default address
	service string // the full name of its StatusService
	call    getStatus
}

var targets = []target{
	{"lake", "LAKE_ADDR", "127.0.0.1:50051", "datapunk.lake.v1.StatusService",
		func(ctx context.Context, conn *grpc.ClientConn, engines []string, pt *durationpb.Duration) (proto.Message, *commonv1.ServiceStatus, error) {
			r, err := lakev1.NewStatusServiceClient(conn).GetStatus(ctx,
				&lakev1.GetStatusRequest{Engines: engines, ProbeTimeout: pt})
			return r, r.GetStatus(), err
		}},
	{"stream", "STREAM_ADDR", "127.0.0.1:50052", "datapunk.stream.v1.StatusService",
		func(ctx context.Context, conn *grpc.ClientConn, engines []string, pt *durationpb.Duration) (proto.Message, *commonv1.ServiceStatus, error) {
			r, err := streamv1.NewStatusServiceClient(conn).GetStatus(ctx,
				&streamv1.GetStatusRequest{Engines: engines, ProbeTimeout: pt})
			return r, r.GetStatus(), err
		}},
	{"nexus", "NEXUS_ADDR", "127.0.0.1:50053", "datapunk.nexus.v1.StatusService",
		func(ctx context.Context, conn *grpc.ClientConn, engines []string, pt *durationpb.Duration) (proto.Message, *commonv1.ServiceStatus, error) {
			r, err := nexusv1.NewStatusServiceClient(conn).GetStatus(ctx,
				&nexusv1.GetStatusRequest{Engines: engines, ProbeTimeout: pt})
			return r, r.GetStatus(), err
		}},
}

func (tg target) address() string {
	return envOr(tg.envVar, tg.addr)
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// entryAddress is Nexus's gRPC entry, one address for every service.
func entryAddress() string {
	return envOr("ENTRY_ADDR", "127.0.0.1:50050")
}

// apiKey is the credential the entry is called with.
func apiKey(t *testing.T) string {
	key := os.Getenv("CONTRACT_API_KEY")
	if key == "" {
		t.Fatalf("CONTRACT_API_KEY is not set: give an API key the entry accepts (datapunk admin-key)")
	}
	return key
}

// dial connects to addr; with a non-empty key every unary call carries it as x-api-key.
func dial(t *testing.T, addr, key string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if key != "" {
		opts = append(opts, grpc.WithUnaryInterceptor(func(ctx context.Context, method string,
			req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, "x-api-key", key), method, req, reply, cc, opts...)
		}))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatalf("cannot create a client for %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func rpcContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestContract checks each service's StatusService through the entry, with the API key.
func TestContract(t *testing.T) {
	entry := dial(t, entryAddress(), apiKey(t))
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			direct := dial(t, tg.address(), "")
			if !t.Run("HealthCheck", func(t *testing.T) { testHealth(t, tg, direct, entry) }) {
				t.Fatalf("%s at %s (%s) or the entry at %s does not answer health checks; "+
					"its other checks are skipped", tg.name, tg.address(), tg.envVar, entryAddress())
			}
			t.Run("GetStatus", func(t *testing.T) { testGetStatus(t, tg, entry) })
			t.Run("InvalidArgument", func(t *testing.T) { testInvalid(t, tg, entry) })
		})
	}
}

// testHealth checks the standard gRPC health service answers: the service's own, on its
// port without credentials, for the whole server and for the StatusService by name; and
// the entry's. NOT_SERVING is a valid answer (an engine may be down); UNKNOWN,
// SERVICE_UNKNOWN and errors are not.
func testHealth(t *testing.T, tg target, direct, entry *grpc.ClientConn) {
	checks := []struct {
		where   string
		conn    *grpc.ClientConn
		service string
	}{
		{tg.address(), direct, ""},
		{tg.address(), direct, tg.service},
		{"the entry at " + entryAddress(), entry, ""},
	}
	for _, c := range checks {
		resp, err := healthpb.NewHealthClient(c.conn).Check(rpcContext(t),
			&healthpb.HealthCheckRequest{Service: c.service})
		if err != nil {
			t.Fatalf("%s: grpc.health.v1.Health/Check(service=%q) failed: %v", c.where, c.service, err)
		}
		switch resp.GetStatus() {
		case healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING:
			t.Logf("%s: health(%q) = %s", c.where, c.service, resp.GetStatus())
		default:
			t.Errorf("%s: health(%q) = %s, want SERVING or NOT_SERVING", c.where, c.service, resp.GetStatus())
		}
	}
}

// TestCredentials checks who may call what: public calls (health, StatusService) need no
// credential, at the entry or on a service's port; everything else needs one at the entry
// (refused UNAUTHENTICATED with reason MISSING_CREDENTIALS without) and a Nexus service
// token on a service's port, which no client holds.
func TestCredentials(t *testing.T) {
	key := apiKey(t)
	anonymous := dial(t, entryAddress(), "")
	withKey := dial(t, entryAddress(), key)
	lake := targets[0]
	lakePort := dial(t, lake.address(), "")

	t.Run("StatusIsOpen", func(t *testing.T) {
		for _, tg := range targets {
			for where, conn := range map[string]*grpc.ClientConn{
				"the entry at " + entryAddress(): anonymous,
				tg.address():                     dial(t, tg.address(), ""),
			} {
				if _, st, err := tg.call(rpcContext(t), conn, nil, nil); err != nil || st.GetService() != tg.name {
					t.Errorf("%s: %s/GetStatus without credentials = %v, %v; want this service's status",
						where, tg.service, st, err)
				}
			}
		}
	})
	t.Run("EntryWithoutCredentials", func(t *testing.T) {
		_, err := lakev1.NewVectorServiceClient(anonymous).ListCollections(rpcContext(t), &lakev1.ListCollectionsRequest{})
		wantRefused(t, err, codes.Unauthenticated, "MISSING_CREDENTIALS")
		_, err = nexusv1.NewApiKeyServiceClient(anonymous).ListApiKeys(rpcContext(t), &nexusv1.ListApiKeysRequest{})
		wantRefused(t, err, codes.Unauthenticated, "MISSING_CREDENTIALS")
	})
	t.Run("EntryWithUnknownApiKey", func(t *testing.T) {
		ctx := metadata.AppendToOutgoingContext(rpcContext(t), "x-api-key", "dpk_contract0000_notakeynotakeynotakeynotakey")
		_, err := lakev1.NewVectorServiceClient(anonymous).ListCollections(ctx, &lakev1.ListCollectionsRequest{})
		wantRefused(t, err, codes.Unauthenticated, "INVALID_API_KEY")
	})
	t.Run("EntryWithApiKey", func(t *testing.T) {
		if _, err := lakev1.NewVectorServiceClient(withKey).ListCollections(rpcContext(t), &lakev1.ListCollectionsRequest{}); err != nil {
			t.Errorf("ListCollections with the API key failed: %v", err)
		}
		who, err := nexusv1.NewAuthServiceClient(withKey).WhoAmI(rpcContext(t), &nexusv1.WhoAmIRequest{})
		if err != nil {
			t.Fatalf("WhoAmI with the API key failed: %v", err)
		}
		caller := who
		if who.GetOnBehalfOf() != nil { // Nexus's service forwarding the caller
			caller = who.GetOnBehalfOf()
		}
		if caller.GetKind() != "api_key" || caller.GetTenant() != "default" || !contains(caller.GetRoles(), "admin") {
			t.Errorf("WhoAmI = %v, want an api_key with the admin role of tenant default", who)
		}
	})
	t.Run("LakePortWithoutServiceToken", func(t *testing.T) {
		client := lakev1.NewVectorServiceClient(lakePort)
		_, err := client.ListCollections(rpcContext(t), &lakev1.ListCollectionsRequest{})
		wantRefused(t, err, codes.Unauthenticated, "MISSING_CREDENTIALS")
		// The API key is for the entry; the Lake does not take it in place of a service token.
		ctx := metadata.AppendToOutgoingContext(rpcContext(t), "x-api-key", key)
		_, err = client.ListCollections(ctx, &lakev1.ListCollectionsRequest{})
		wantRefused(t, err, codes.Unauthenticated, "")
	})
}

// wantRefused checks err has the code and an ErrorInfo of domain datapunk.dev with the
// reason (any reason when reason is empty).
func wantRefused(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	s, _ := status.FromError(err)
	if s.Code() != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
	info := errorInfo(s)
	if info == nil || info.GetDomain() != errorDomain || info.GetReason() == "" ||
		(reason != "" && info.GetReason() != reason) {
		t.Errorf("want an ErrorInfo with domain %q and reason %q, got %v", errorDomain, reason, info)
	}
	t.Logf("%s: %s (%s)", s.Code(), s.Message(), info.GetReason())
}

func errorInfo(s *status.Status) *errdetails.ErrorInfo {
	for _, d := range s.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

func contains(list []string, want string) bool {
	for _, v := range list {
		if v == want {
			return true
		}
	}
	return false
}

func testGetStatus(t *testing.T, tg target, conn *grpc.ClientConn) {
	resp, st, err := tg.call(rpcContext(t), conn, nil, nil)
	if err != nil {
		t.Fatalf("%s at %s: GetStatus failed: %v", tg.name, tg.address(), err)
	}
	if st == nil {
		t.Fatalf("GetStatusResponse.status is missing")
	}
	if unknown := unknownFields(resp.ProtoReflect(), ""); len(unknown) > 0 {
		t.Errorf("response carries fields the contract does not define: %v", unknown)
	}
	// The response must survive a JSON round trip (what REST clients and grpcurl see).
	js, err := protojson.Marshal(resp)
	if err != nil {
		t.Fatalf("response does not marshal to JSON: %v", err)
	}
	back := resp.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(js, back); err != nil || !proto.Equal(resp, back) {
		t.Errorf("JSON round trip changed the response (err=%v): %s", err, js)
	}
	t.Logf("%s", js)

	if st.GetService() != tg.name {
		t.Errorf("status.service = %q, want %q", st.GetService(), tg.name)
	}
	if st.GetVersion() == "" {
		t.Errorf("status.version is empty")
	}
	if st.GetInstanceId() == "" {
		t.Errorf("status.instance_id is empty")
	}
	if st.GetStartTime() == nil || st.GetStartTime().CheckValid() != nil ||
		st.GetStartTime().AsTime().After(time.Now().Add(time.Minute)) {
		t.Errorf("status.start_time = %v, want a valid time in the past", st.GetStartTime())
	}
	if st.GetUptime() != nil && (st.GetUptime().CheckValid() != nil || st.GetUptime().AsDuration() < 0) {
		t.Errorf("status.uptime = %v, want a valid non-negative duration", st.GetUptime())
	}
	if st.GetState() == commonv1.ServingState_SERVING_STATE_UNSPECIFIED {
		t.Errorf("status.state is SERVING_STATE_UNSPECIFIED")
	}
	seen := map[string]bool{}
	for _, e := range st.GetEngines() {
		if !engineName.MatchString(e.GetName()) || seen[e.GetName()] {
			t.Errorf("engine name %q is not a distinct name matching %s", e.GetName(), engineName)
		}
		seen[e.GetName()] = true
		if e.GetReachable() && e.GetError() != "" {
			t.Errorf("engine %s is reachable but has error %q", e.GetName(), e.GetError())
		}
		if !e.GetReachable() && e.GetRoundTrip() != nil {
			t.Errorf("engine %s is unreachable but has round_trip %v", e.GetName(), e.GetRoundTrip())
		}
		if st.GetState() == commonv1.ServingState_SERVING_STATE_SERVING && e.GetRequired() && !e.GetReachable() {
			t.Errorf("state is SERVING but required engine %s is unreachable", e.GetName())
		}
		if credentials.MatchString(e.GetEndpoint()) {
			t.Errorf("engine %s endpoint %q carries a password", e.GetName(), e.GetEndpoint())
		}
	}

	// "Report only these engines": asking for the first engine returns exactly that one.
	if len(st.GetEngines()) > 0 {
		want := st.GetEngines()[0].GetName()
		_, only, err := tg.call(rpcContext(t), conn, []string{want}, nil)
		if err != nil {
			t.Fatalf("GetStatus(engines=[%q]) failed: %v", want, err)
		}
		if len(only.GetEngines()) != 1 || only.GetEngines()[0].GetName() != want {
			var got []string
			for _, e := range only.GetEngines() {
				got = append(got, e.GetName())
			}
			t.Errorf("GetStatus(engines=[%q]) reported engines %v, want exactly [%s]", want, got, want)
		}
	}
}

// testInvalid sends requests that break the contract's buf.validate constraints and
// expects INVALID_ARGUMENT with an ErrorInfo and a BadRequest naming the field.
func testInvalid(t *testing.T, tg target, conn *grpc.ClientConn) {
	cases := []struct {
		name         string
		engines      []string
		probeTimeout *durationpb.Duration
		field        string // prefix of the BadRequest field violation's path
	}{
		{"engine name with a space", []string{"BAD NAME"}, nil, "engines"},
		{"duplicate engine names", []string{"postgres", "postgres"}, nil, "engines"},
		{"probe_timeout over 30s", nil, durationpb.New(60 * time.Second), "probe_timeout"},
		{"probe_timeout zero", nil, durationpb.New(0), "probe_timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := tg.call(rpcContext(t), conn, c.engines, c.probeTimeout)
			s, _ := status.FromError(err)
			if s.Code() != codes.InvalidArgument {
				t.Fatalf("got %v, want code InvalidArgument", err)
			}
			info := errorInfo(s)
			var bad *errdetails.BadRequest
			for _, d := range s.Details() {
				if d, ok := d.(*errdetails.BadRequest); ok {
					bad = d
				}
			}
			if info == nil || info.GetDomain() != errorDomain || info.GetReason() == "" {
				t.Errorf("want an ErrorInfo with domain %q and a reason, got %v", errorDomain, info)
			}
			found := false
			for _, v := range bad.GetFieldViolations() {
				found = found || strings.HasPrefix(v.GetField(), c.field)
			}
			if !found {
				t.Errorf("want a BadRequest field violation on %s, got %v", c.field, bad)
			}
			t.Logf("%s: %s", s.Code(), s.Message())
		})
	}
}

// unknownFields lists the paths of fields the generated (contract) types do not know.
func unknownFields(m protoreflect.Message, path string) []string {
	var out []string
	if len(m.GetUnknown()) > 0 {
		out = append(out, fmt.Sprintf("%s<%d unknown bytes>", path, len(m.GetUnknown())))
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len(); i++ {
				out = append(out, unknownFields(v.List().Get(i).Message(), fmt.Sprintf("%s[%d].", p, i))...)
			}
		case fd.IsMap():
		case fd.Message() != nil:
			out = append(out, unknownFields(v.Message(), p+".")...)
		}
		return true
	})
	return out
}
