# The Shoal image the manifests in deploy/ run: every daemon and tool in one image
# (shoal-mds, shoal-osd, shoal-fuse, shoal-csi, shoal).
#   docker build -t shoal/shoal:0.1.0 .
FROM rust:1-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq librocksdb-dev libclang-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bins \
    && mkdir -p /out \
    && cp target/release/shoal-mds target/release/shoal-osd target/release/shoal-fuse \
          target/release/shoal-csi target/release/shoal /out/

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq fuse3 librocksdb7.8 ca-certificates util-linux \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
RUN ln -s /usr/local/bin/shoal-fuse /usr/local/sbin/mount.fuse.shoal
