package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/yunchi/yunchi/controller/audit"
	"github.com/yunchi/yunchi/controller/auth"
	"github.com/yunchi/yunchi/docs"
	"github.com/yunchi/yunchi/internal/pki"
	yunchiv1 "github.com/yunchi/yunchi/proto/yunchi/v1"
)

// MinClientPing is the shortest keepalive interval the controllers accept
// from a client; agents and followers ping every 10 s.
const MinClientPing = 5 * time.Second

// streamWorkers is the size of the gRPC server's pool of call goroutines.
const streamWorkers = 256

// NewGRPCServer registers every service behind one interceptor chain:
// metrics first (it sees every outcome), then access (controller/auth:
// the caller from its token or client certificate, its role against the
// method's rule, its department), then the audit context, then the
// membership check (a removed
// controller answers where to go instead), then the refusal of local reads
// this controller cannot vouch for, then leader forwarding (so a
// forwarded call was already authenticated here), then, on the leader, the
// request id (idempotency key) lookup last.
func (s *Server) NewGRPCServer(m *Metrics) *grpc.Server {
	unary := []grpc.UnaryServerInterceptor{m.UnaryInterceptor}
	stream := []grpc.StreamServerInterceptor{m.StreamInterceptor}
	if s.Auth != nil {
		unary = append(unary, s.Auth.UnaryInterceptor)
		stream = append(stream, s.Auth.StreamInterceptor)
	}
	// Who asked and what (the audit context commands are recorded with),
	// after authentication, which names the caller.
	auditIC := audit.UnaryInterceptor
	if s.AuditRecorder != nil {
		auditIC = s.AuditRecorder.UnaryInterceptor // also records writes refused before the log
	}
	unary = append(unary, auditIC, s.MemberInterceptor, s.StaleReadInterceptor, s.LeaderInterceptor, s.IdempotencyInterceptor)
	stream = append(stream, s.MemberStreamInterceptor, s.StaleStreamInterceptor)
	opts := []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.MaxRecvMsgSize(MaxGRPCRequest),
		// gRPC's own transport (see Split) refuses pings more often than
		// every 5 minutes by default and would close the connections of
		// agents and followers, which ping every 10 s (also when idle)
		// to notice a hung controller.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: MinClientPing, PermitWithoutStream: true}),
		// Calls run on a pool of long-lived goroutines, not one new
		// goroutine each: a new goroutine grew its stack through the
		// interceptor chain on every call (stack growth was 10% of the
		// CPU at 256 concurrent creates). Beyond 256 calls at once gRPC
		// starts goroutines as before.
		grpc.NumStreamWorkers(streamWorkers)}
	if s.TLS != nil {
		// The port accepts TLS and hands gRPC its connections decrypted
		// (Split); these credentials tell gRPC their TLS state.
		opts = append(opts, grpc.Creds(pki.HandshakenCreds()))
	}
	gs := grpc.NewServer(opts...)
	// Every service is registered once, here; those REST serves are also
	// kept, with their implementation, for NewHTTPHandler's direct calls.
	s.local = &localServer{gs: gs, unary: unary}
	ten, img := s.Tenancy(), s.ImageService()
	for _, svc := range []struct {
		desc *grpc.ServiceDesc
		impl any
		rest bool
	}{
		{&yunchiv1.VMService_ServiceDesc, s, true},
		{&yunchiv1.HostService_ServiceDesc, s, true},
		{&yunchiv1.CapacityService_ServiceDesc, s, true},
		{&yunchiv1.ClusterService_ServiceDesc, s, true},
		{&yunchiv1.AgentService_ServiceDesc, s, false},
		{&yunchiv1.RatioService_ServiceDesc, s, true},
		{&yunchiv1.GroupService_ServiceDesc, s, true},
		{&yunchiv1.DepartmentService_ServiceDesc, ten, true},
		{&yunchiv1.ProjectService_ServiceDesc, ten, true},
		{&yunchiv1.UserService_ServiceDesc, ten, true},
		{&yunchiv1.TokenService_ServiceDesc, ten, true},
		{&yunchiv1.QuotaService_ServiceDesc, s, true},
		{&yunchiv1.AuditService_ServiceDesc, s, true},
		{&yunchiv1.ImageService_ServiceDesc, img, true},
		{&yunchiv1.ImagePeerService_ServiceDesc, img, false},
		{&yunchiv1.VolumeService_ServiceDesc, s, true},
		{&yunchiv1.TopologyService_ServiceDesc, s, true},
		{&yunchiv1.ProtectionService_ServiceDesc, s, true},
		{&yunchiv1.BackupService_ServiceDesc, s, true},
		{&yunchiv1.RecoveryService_ServiceDesc, s, true},
		{&yunchiv1.BackupRepoService_ServiceDesc, s.repoService(), false},
	} {
		gs.RegisterService(svc.desc, svc.impl)
		if svc.rest {
			s.local.services = append(s.local.services, localService{svc.desc, svc.impl})
		}
	}
	healthpb.RegisterHealthServer(gs, s.newHealthServer())
	return gs
}

// NewHTTPHandler serves gRPC (HTTP/2 with application/grpc) and everything
// else on one port: REST through grpc-gateway, which calls this same
// controller's gRPC services so REST goes through the same interceptors;
// /openapi.json; /metrics; /healthz (503 with the reason while this
// controller cannot vouch for its state). REST requests pass the input
// rules of restguard.go first. gRPC goes to the server NewGRPCServer
// built, which must have been called first.
//
// The gateway's gRPC calls stay in this process. A unary call runs the
// handler directly behind that server's unary interceptors
// (localconn.go): no HTTP/2 framing, no encoding of either message, no
// goroutine hand-off. Streams go to the server over an in-memory listener
// (with gRPC's own transport, not ServeHTTP), which closes when ctx is
// done or the server stops.
func (s *Server) NewHTTPHandler(ctx context.Context, m *Metrics, ho HTTPOptions) (http.Handler, error) {
	if s.local == nil {
		return nil, errors.New("api: NewHTTPHandler before NewGRPCServer")
	}
	gs := s.local.gs
	var guard *restGuard
	jsonpb := &runtime.JSONPb{
		// Zero amounts are spelled out ("allocated": {"vcpus": "0", ...},
		// not {}); unset messages and optional fields stay absent.
		MarshalOptions:   protojson.MarshalOptions{EmitDefaultValues: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &restCodec{
			Marshaler: &runtime.HTTPBodyMarshaler{Marshaler: jsonpb},
			marshal:   jsonpb.MarshalOptions,
			unmarshal: jsonpb.UnmarshalOptions,
		}),
		// A form POST must not turn into another method or route.
		runtime.WithDisablePathLengthFallback(),
		runtime.WithDisableHTTPMethodOverride(),
		// A rate-limited call's wait is the standard Retry-After header;
		// other response metadata keeps the gateway's Grpc-Metadata-
		// prefix.
		runtime.WithOutgoingHeaderMatcher(func(k string) (string, bool) {
			if k == auth.RetryAfterKey {
				return "Retry-After", true
			}
			return runtime.MetadataHeaderPrefix + k, true
		}),
		// Idempotency-Key travels as the idempotency-key metadata.
		runtime.WithIncomingHeaderMatcher(func(k string) (string, bool) {
			if http.CanonicalHeaderKey(k) == "Idempotency-Key" {
				return idempotencyKey, true
			}
			return runtime.DefaultHeaderMatcher(k)
		}),
		// The guard routes first; should the gateway ever disagree, it
		// still answers 404 or 405 with Allow, not 501.
		runtime.WithRoutingErrorHandler(func(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, _ int) {
			guard.notRouted(w, r)
		}),
	)
	guard, err := newRESTGuard(gw, gw, ho, yunchiv1.File_yunchi_v1_yunchi_proto, yunchiv1.File_yunchi_v1_tenancy_proto, yunchiv1.File_yunchi_v1_identity_proto, yunchiv1.File_yunchi_v1_quota_proto, yunchiv1.File_yunchi_v1_audit_proto, yunchiv1.File_yunchi_v1_image_proto, yunchiv1.File_yunchi_v1_volume_proto, yunchiv1.File_yunchi_v1_dr_proto)
	if err != nil {
		return nil, err
	}
	conn, err := inProcessConn(ctx, gs)
	if err != nil {
		return nil, err
	}
	// Unary calls run the handlers directly behind the server's
	// interceptors (localconn.go); streams go over the in-memory
	// connection.
	cc := newLocalConn(s.local, conn)
	if err := errors.Join(
		yunchiv1.RegisterVMServiceHandlerClient(ctx, gw, yunchiv1.NewVMServiceClient(cc)),
		yunchiv1.RegisterHostServiceHandlerClient(ctx, gw, yunchiv1.NewHostServiceClient(cc)),
		yunchiv1.RegisterCapacityServiceHandlerClient(ctx, gw, yunchiv1.NewCapacityServiceClient(cc)),
		yunchiv1.RegisterClusterServiceHandlerClient(ctx, gw, yunchiv1.NewClusterServiceClient(cc)),
		yunchiv1.RegisterRatioServiceHandlerClient(ctx, gw, yunchiv1.NewRatioServiceClient(cc)),
		yunchiv1.RegisterGroupServiceHandlerClient(ctx, gw, yunchiv1.NewGroupServiceClient(cc)),
		yunchiv1.RegisterDepartmentServiceHandlerClient(ctx, gw, yunchiv1.NewDepartmentServiceClient(cc)),
		yunchiv1.RegisterProjectServiceHandlerClient(ctx, gw, yunchiv1.NewProjectServiceClient(cc)),
		yunchiv1.RegisterUserServiceHandlerClient(ctx, gw, yunchiv1.NewUserServiceClient(cc)),
		yunchiv1.RegisterTokenServiceHandlerClient(ctx, gw, yunchiv1.NewTokenServiceClient(cc)),
		yunchiv1.RegisterQuotaServiceHandlerClient(ctx, gw, yunchiv1.NewQuotaServiceClient(cc)),
		yunchiv1.RegisterAuditServiceHandlerClient(ctx, gw, yunchiv1.NewAuditServiceClient(cc)),
		yunchiv1.RegisterImageServiceHandlerClient(ctx, gw, yunchiv1.NewImageServiceClient(cc)),
		yunchiv1.RegisterVolumeServiceHandlerClient(ctx, gw, yunchiv1.NewVolumeServiceClient(cc)),
		yunchiv1.RegisterTopologyServiceHandlerClient(ctx, gw, yunchiv1.NewTopologyServiceClient(cc)),
		yunchiv1.RegisterProtectionServiceHandlerClient(ctx, gw, yunchiv1.NewProtectionServiceClient(cc)),
		yunchiv1.RegisterBackupServiceHandlerClient(ctx, gw, yunchiv1.NewBackupServiceClient(cc)),
		yunchiv1.RegisterRecoveryServiceHandlerClient(ctx, gw, yunchiv1.NewRecoveryServiceClient(cc)),
	); err != nil {
		conn.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/", guard)
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(docs.OpenAPI)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if reason := s.unhealthyReason(); reason != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("unhealthy: " + reason + "\n"))
			return
		}
		w.Write([]byte("ok\n"))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	}), nil
}

// inProcessBuffer is the in-memory connection's buffer each way.
const inProcessBuffer = 1 << 20

// inProcessConn serves gs on an in-memory listener and returns a client
// connection to it; both close when ctx is done (gs.Stop closes the
// listener too).
func inProcessConn(ctx context.Context, gs *grpc.Server) (*grpc.ClientConn, error) {
	lis := bufconn.Listen(inProcessBuffer)
	conn, err := grpc.NewClient("passthrough:///in-process",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("in-process gRPC connection: %w", err)
	}
	go gs.Serve(lis) // returns once lis closes or gs stops
	context.AfterFunc(ctx, func() {
		conn.Close()
		lis.Close()
	})
	return conn, nil
}
