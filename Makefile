# meshfed — developer entry points. `make demo` runs the main job, `make ci` the checks.
SHELL := bash
CARGO ?= cargo
MESHFED = $(CARGO) run --quiet --locked -p meshfed-cli --
EXAMPLES = scenarios/examples/alpha.yaml scenarios/examples/beta.yaml

## Benchmarks (not part of ci): results are appended to bench/RESULTS.md.
bench-trust:
	$(CARGO) bench --locked -p meshfed-trust --bench handshake

bench-proxy:
	$(CARGO) bench --locked -p meshfed-proxy --bench datapath

bench-peering:
	$(CARGO) bench --locked -p meshfed-peering --bench propagation

## The sidecar vs HAProxy and nginx as processes (P1, P2 with mTLS); needs bench-tools.
## BENCH_REPS, BENCH_SECS, BENCH_WARMUP tune the run (defaults 3, 10, 3).
bench-peers:
	$(CARGO) bench --locked -p meshfed-cli --bench peers

## The full cross-mesh path (P4: client sidecar → egress → ingress → server sidecar) over the
## TCP and the QUIC tunnel vs four-instance HAProxy and nginx chains; needs bench-tools.
bench-crossmesh:
	$(CARGO) bench --locked -p meshfed-cli --bench crossmesh

## Failover figures: the failover scenario, repeated (BENCH_REPS, default 3), medians recorded.
bench-failover:
	$(CARGO) bench --locked -p meshfed-cli --bench failover

## Fuzzing (not part of ci, which replays the corpus: fuzz-targets/tests/corpus.rs): each
## target under libFuzzer (cargo-fuzz, installed from crates.io if missing; the stable
## toolchain with RUSTC_BOOTSTRAP for its sanitizer flags) for FUZZ_SECS (default 60), growing
## fuzz/corpus/<target>; a crash stops the run and is written to fuzz/artifacts/<target>/.
## The first build takes several minutes (the whole dependency tree with ASan).
FUZZ_SECS ?= 60
FUZZ_TARGETS ?= sni names documents token bundle store_record peering_message config_snapshot dns_query
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	$(CARGO) run --quiet --locked -p meshfed-fuzz-targets --bin fuzz-seeds -- fuzz/corpus
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZ_SECS) s"; \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t -- -max_total_time=$(FUZZ_SECS) -rss_limit_mb=4096 -print_final_stats=1 || exit 1; \
	done

## Shrinks each target's corpus to the inputs that add coverage (run before committing it).
fuzz-cmin:
	cd fuzz && for t in $(FUZZ_TARGETS); do RUSTC_BOOTSTRAP=1 $(CARGO) fuzz cmin -O $$t || exit 1; done

## The fault suite's long form (not part of ci, which runs the short forms in scenarios/faults/
## through cli/tests/scenarios.rs): every fault scenario, short and long (scenarios/soak/:
## a 10-minute partition, control planes down for 4 minutes, 100 SIGKILL/restart cycles of
## each control plane, gateway, sidecar and app), one after the other, ending with a summary table of
## faults played and requests sent, failed and lost. About 40 minutes; reports in target/soak.
soak:
	$(CARGO) build --quiet --locked -p meshfed-cli
	target/debug/meshfed scenario run scenarios/faults/*.yaml scenarios/soak/*.yaml --out target/soak

## The peers and the load generator for bench-peers (Debian packages, and oha from crates.io).
bench-tools:
	command -v haproxy >/dev/null && command -v nginx >/dev/null && command -v ld.lld >/dev/null && command -v valgrind >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx wrk lld valgrind; }
	command -v oha >/dev/null || $(CARGO) install oha --locked

## Re-records the functions a sidecar runs (cli/sidecar.order), which release builds lay out
## together (cli/build.rs, with lld); needs bench-tools. Run after large proxy changes.
sidecar-order:
	$(CARGO) build --release --locked -p meshfed-cli
	scripts/sidecar-order.sh

.PHONY: kube-tools soak fuzz fuzz-cmin sidecar-order check-kind bench-trust bench-peering bench-proxy bench-peers bench-crossmesh bench-failover bench-tools demo demo-peering ci fmt-check clippy test generate check-generated validate-manifests tools build

DEMO = target/demo

## Main job: the two-mesh failover scenario in the embedded lab (scenarios/failover.yaml):
## alpha's orders fail, its clients' calls move to beta through the gateways and come back.
## Prints progress; writes target/lab/failover.json and target/lab/failover.html.
demo:
	$(MESHFED) validate scenarios/*.yaml $(EXAMPLES)
	$(MESHFED) scenario run scenarios/failover.yaml --out target/lab

## The peering-token exchange between the example meshes, over the wire (not part of ci).
demo-peering:
	$(MESHFED) explain --all $(addprefix --mesh ,$(EXAMPLES))
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	$(MESHFED) trust init --dir $(DEMO)/alpha --trust-domain alpha-mesh.local
	$(MESHFED) trust init --dir $(DEMO)/beta --trust-domain beta-mesh.local
	$(MESHFED) peering token create --dir $(DEMO)/alpha --peer-name alpha-mesh --address 127.0.1.1 \
	  --server-id spiffe://alpha-mesh.local/ns/alpha-system/sa/meshfed-peering \
	  --client-id alpha-mesh.local/ns/alpha-system/sa/egress-beta-mesh-service-account > $(DEMO)/token
	$(CARGO) build --quiet --locked -p meshfed-cli
	@target/debug/meshfed peering run --mesh scenarios/examples/alpha.yaml --dir $(DEMO)/alpha \
	  --listen 127.0.1.1:8188 --admin 127.0.1.1:15020 --store $(DEMO)/alpha-store \
	  > $(DEMO)/alpha-peering.log 2>&1 & echo $$! > $(DEMO)/alpha-peering.pid
	@for i in $$(seq 150); do target/debug/meshfed status --admin 127.0.1.1:15020 >/dev/null 2>&1 && break; sleep 0.2; done
	@status=0; target/debug/meshfed peering token accept --dir $(DEMO)/beta --namespace beta-system \
	  --mesh-name beta - < $(DEMO)/token || status=$$?; \
	  kill $$(cat $(DEMO)/alpha-peering.pid) 2>/dev/null; \
	  test -f $(DEMO)/alpha/bundles/beta-mesh.local.json && echo "alpha now holds beta's bundle"; \
	  exit $$status

## Everything CI checks, in the order a failure is cheapest to find.
ci: fmt-check clippy check-generated validate-manifests check-kind test demo

build:
	$(CARGO) build --locked --workspace --all-targets

fmt-check:
	$(CARGO) fmt --all --check

clippy:
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

## The whole suite; the last line sums every test binary's results.
## Every test binary runs even when one fails (--no-fail-fast); the exit status is cargo's,
## not tee's (pipefail).
## The hostile-input suite's tests leave one row per surface in target/tmp/hostile, printed
## as a table at the end (scripts/hostile-table.sh).
test:
	@mkdir -p target; rm -rf target/tmp/hostile; set -o pipefail; status=0; \
	  $(CARGO) test --locked --workspace --no-fail-fast 2>&1 | tee target/test.log || status=$$?; \
	  scripts/hostile-table.sh target/tmp/hostile; \
	  awk '/^test result:/ {p+=$$4; f+=$$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log; \
	  exit $$status

## Regenerate the committed CRD manifests from the Rust types.
generate:
	$(MESHFED) crds --out-dir deploy/crds

## Fails when deploy/crds differs from what the types generate.
check-generated:
	@tmp=$$(mktemp -d) && $(MESHFED) crds --out-dir $$tmp 2>/dev/null && \
	  diff -ru deploy/crds $$tmp || { echo "deploy/crds is stale: run 'make generate' and commit"; exit 1; }; \
	  rm -rf $$tmp

## Offline validation of every manifest under deploy/ against the Kubernetes schema.
## The kind scripts cannot run here (no container engine): shellcheck them, dry-run them
## (local meshfed steps — trust, inject, validate — run for real), and validate what they
## would apply against the Kubernetes schema.
check-kind:
	$(CARGO) build --locked -p meshfed-cli
	@command -v shellcheck >/dev/null || { echo "shellcheck is missing: run 'make tools'"; exit 1; }
	shellcheck -x scenarios/kind/*.sh scripts/sidecar-order.sh scripts/hostile-table.sh scripts/kube-apiserver.sh
	@rm -rf target/kind-dry-run
	MESHFED=$(CURDIR)/target/debug/meshfed DRY_RUN=1 WORK=target/kind-dry-run bash scenarios/kind/up.sh >target/kind-dry-run.log 2>&1 || { cat target/kind-dry-run.log; exit 1; }
	MESHFED=$(CURDIR)/target/debug/meshfed DRY_RUN=1 WORK=target/kind-dry-run bash scenarios/kind/failover.sh >>target/kind-dry-run.log 2>&1 || { cat target/kind-dry-run.log; exit 1; }
	DRY_RUN=1 WORK=target/kind-dry-run bash scenarios/kind/down.sh >>target/kind-dry-run.log 2>&1
	kubernetes-validate --strict --quiet target/kind-dry-run/*-apps-injected.yaml target/kind-dry-run/*-gateways.yaml

validate-manifests:
	@command -v kubernetes-validate >/dev/null || { echo "kubernetes-validate is missing: run 'make tools'"; exit 1; }
	find deploy -name '*.yaml' -print0 | xargs -0 kubernetes-validate --strict --quiet

## The real Kubernetes API server of the tests' real-API tier (k8s/tests/real_api.rs): built
## once from Debian's kubernetes source package and cached outside the repository
## (scripts/kube-apiserver.sh; about 10 minutes cold). CI builds it and requires it
## (MESHFED_REQUIRE_REAL_KUBE=1); elsewhere those tests are skipped, saying so, without it.
kube-tools:
	scripts/kube-apiserver.sh build

## Tools the checks need beyond the Rust toolchain.
tools:
	@command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
	@command -v iptables-restore >/dev/null && command -v shellcheck >/dev/null && command -v ld.lld >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables shellcheck lld >/dev/null; }
