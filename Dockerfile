# The meshfed image: the one binary, plus iptables for the injected init container
# (`meshfed redirect`) and curl for the kind scripts' checks. Build the binary first:
#   cargo build --release --locked && docker build -t meshfed:dev .
FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1337 --user-group --no-create-home --shell /usr/sbin/nologin meshfed
COPY target/release/meshfed /usr/local/bin/meshfed
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/meshfed"]
