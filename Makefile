# Yunchi: `make dev` runs the embedded 3-controller cluster with 45 simulated
# hosts; `make test` runs every test. Both install missing build dependencies.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
BIN := bin
PROTO_SRC := $(wildcard proto/yunchi/v1/*.proto proto/yunchi/state/v1/*.proto)

.PHONY: all deps build dev test fuzz-short proto bench bench-controller bench-qemu bench-dr bench-failover bench-mirror chaos clean

all: build

# Build dependencies: libvirt headers for the agent's cgo bindings, pkg-config.
deps:
	@bash scripts/deps.sh

build: deps
	$(GO) build -o $(BIN)/yunchid ./cmd/yunchid
	CGO_ENABLED=0 $(GO) build -o $(BIN)/yunchi ./cmd/yunchi

dev: build
	./$(BIN)/yunchid dev

test: deps
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/yunchi
	$(GO) test -race -count=1 -timeout 20m ./...
	@$(MAKE) --no-print-directory fuzz-short

# Each fuzz target (func FuzzXxx in FUZZ_PKGS) for FUZZTIME. A test binary
# fuzzes one target at a time, so each package's instrumented binary is
# built once and run per target, in the package directory (its
# testdata/fuzz corpus) with go test's corpus cache. Plain `go test` runs
# only the seeds and testdata/fuzz. The budget is a count of inputs, not a
# duration: Go 1.26's coordinator can fail a clean duration-bounded run with
# "context deadline exceeded" when the deadline lands mid-exchange with a
# worker (go.dev/issue/75804, fixed in Go 1.27). FUZZTIME=200000x looks longer.
FUZZTIME ?= 20000x
FUZZ_PKGS := controller/api agent/libvirt internal/pbjson
fuzz-short:
	@set -e; bin=$$(mktemp -d); trap 'rm -rf "$$bin"' EXIT; cache=$$($(GO) env GOCACHE)/fuzz; \
	for pkg in $(FUZZ_PKGS); do \
		$(GO) test -c -fuzz . -o "$$bin/fuzz.test" ./$$pkg; \
		imp=$$($(GO) list ./$$pkg); \
		for fn in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$pkg/*_test.go); do \
			echo "== $$fn ($$pkg, $(FUZZTIME))"; \
			(cd $$pkg && "$$bin/fuzz.test" -test.run '^$$' -test.fuzz "^$$fn\$$" -test.fuzztime $(FUZZTIME) \
				-test.fuzzcachedir "$$cache/$$imp") || exit 1; \
		done; \
	done

# Fault scenarios under a recorded workload, every checker on each
# (docs/reliability.md): a few minutes; prints each scenario's figures as
# name: value lines; fails on any violation. `make test` runs the short set.
# CHAOS_FLAGS: -chaos.seed N (replay), -chaos.run REGEXP, -chaos.out DIR.
CHAOS_FLAGS ?=
chaos: deps
	$(GO) test -count=1 -timeout 20m -run '^TestChaos$$' -v ./internal/chaos -chaos.full $(CHAOS_FLAGS)

# Regenerate the gRPC, gateway and OpenAPI code from the protos. Offline:
# protoc from Debian (protobuf-compiler), plugins pinned in go.mod's tool
# block, googleapis annotations vendored under proto/third_party.
proto:
	@bash scripts/deps.sh proto
	mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc \
		github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2
	PATH=$(CURDIR)/$(BIN):$$PATH protoc -I proto -I proto/third_party -I /usr/include \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		--grpc-gateway_out=proto --grpc-gateway_opt=paths=source_relative \
		$(PROTO_SRC)
	PATH=$(CURDIR)/$(BIN):$$PATH protoc -I proto -I proto/third_party -I /usr/include \
		--openapiv2_out=docs --openapiv2_opt=allow_merge=true,merge_file_name=openapi,output_format=json,openapi_configuration=proto/openapi.yaml \
		proto/yunchi/v1/yunchi.proto proto/yunchi/v1/tenancy.proto proto/yunchi/v1/identity.proto proto/yunchi/v1/quota.proto proto/yunchi/v1/audit.proto proto/yunchi/v1/image.proto proto/yunchi/v1/volume.proto proto/yunchi/v1/dr.proto
	mv docs/openapi.swagger.json docs/openapi.json

# Scheduler figures (docs/performance.md): the Azure trace replay of
# ../shared/bench/azure-replay.md (workloads described in
# docs/performance.md), W1 fill at H=1000, 5000, 10000 and W2 churn at
# H=300, 400, 500, 600 (too few hosts: the pool runs full) and 720, Yunchi
# against both baselines in the same run, on one core; then the scheduler's
# Go benchmarks. TRACE is the trace directory (public Azure VM trace).
TRACE ?= ../shared/data/azure-vm-trace
bench:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/yunchi ./cmd/yunchi
	@for h in 1000 5000 10000; do \
		echo "== W1 fill, H=$$h"; \
		GOMAXPROCS=1 ./$(BIN)/yunchi simulate --trace $(TRACE) --workload fill --hosts $$h || exit 1; \
	done
	@for h in 300 400 500 600 720; do \
		echo "== W2 churn, H=$$h"; \
		GOMAXPROCS=1 ./$(BIN)/yunchi simulate --trace $(TRACE) --workload churn --hosts $$h || exit 1; \
	done
	$(GO) test -run '^$$' -bench . ./scheduler/...

# Controller write path (docs/performance.md, "Controller write path"): 3
# yunchid controllers on loopback, simulated hosts, creates through gRPC and
# REST at 1, 16 and 256 clients beside raw hashicorp/raft, leader kill -9,
# leader CPU with 10,000 heartbeating hosts, state at 100,000 VMs. About three
# minutes; BENCH_FLAGS shortens it, e.g. BENCH_FLAGS='-duration 1s -trials 2
# -hosts 500 -heartbeat 1s -cpu-window 5s -controller-vms 5000 -vms 10000'.
BENCH_FLAGS ?=
bench-controller: build
	$(GO) build -o $(BIN)/bench-controller ./bench/controller
	./$(BIN)/bench-controller -yunchid $(BIN)/yunchid $(BENCH_FLAGS)

# VM create-to-running on a real QEMU host (docs/performance.md, "VM
# create-to-running"): `yunchid dev --real-hosts 1` in process; 20 VMs one at
# a time and 50 at once through the API, beside libvirt alone doing the same
# define+start on the same host in the same run. A few minutes; needs root,
# libvirtd and QEMU (without them it says why and does nothing).
# BENCH_QEMU_FLAGS: -seq N, -burst N, -bursts N, -memory 128MiB.
BENCH_QEMU_FLAGS ?=
bench-qemu:
	@if [ "$$(id -u)" -ne 0 ]; then echo "bench-qemu: skipped: needs root (private libvirtd + QEMU hosts)"; exit 0; fi; \
	$(MAKE) --no-print-directory deps && \
	$(GO) build -o $(BIN)/bench-qemu ./bench/qemu && \
	./$(BIN)/bench-qemu $(BENCH_QEMU_FLAGS)

# Backups and RPO (docs/performance.md, "Backups and RPO"): the dev cluster
# in process; full and incremental backup of a 10 GiB disk on a simulated
# host and (with root, libvirtd and QEMU) on a real QEMU host, beside cp and
# sha256sum of the same file; repository space after 24 points with 1%
# changed before each; RPO of 100 VMs protected with gold. About 20 minutes
# and up to 50 GiB free under $TMPDIR (it says so and stops if not).
# BENCH_DR_FLAGS: -size 2GiB -real-size 1GiB -space-size 512MiB -points 6
# -rpo-vms 20 -rpo-duration 2m -real off -drop-caches=false.
BENCH_DR_FLAGS ?=
bench-dr: deps
	$(GO) build -o $(BIN)/bench-dr ./bench/dr
	./$(BIN)/bench-dr $(BENCH_DR_FLAGS)

# bench-failover: issue 12's failover RTO only (bench/dr -only failover):
# 100 gold VMs in a1, a1 stopped, `dr failover` to a2; time to all
# running, per-VM RTO p50/p99, largest data-loss window.
bench-failover: deps
	$(GO) build -o $(BIN)/bench-dr ./bench/dr
	./$(BIN)/bench-dr -only failover $(BENCH_FAILOVER_FLAGS)

# Platinum's write cost (docs/performance.md): 4 KiB writes through a TCG
# guest's virtio disk, unmirrored and mirrored synchronously (libvirt block
# copy) to a qemu-nbd export on loopback (writeback and writethrough),
# plain and FUA, in the same run. About a minute; needs root, libvirtd,
# QEMU and qemu-nbd (without them it says why and fails).
# BENCH_MIRROR_FLAGS: -writes 200 -rounds 4 -disk 256 -tmp DIR.
BENCH_MIRROR_FLAGS ?=
bench-mirror: deps
	$(GO) build -o $(BIN)/bench-mirror ./bench/mirror
	./$(BIN)/bench-mirror $(BENCH_MIRROR_FLAGS)

clean:
	rm -rf $(BIN)
