# Build: docker build -t extctl .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY src ./src
# Cargo.toml declares the benchmark, so its file must exist for any build.
COPY benches ./benches
RUN cargo build --release --locked --bin extctl

# Distroless, non-root: no shell, no package manager, just the binary and CA roots.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/extctl /extctl
USER nonroot:nonroot
# The endpoint (and probes), and /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["/extctl"]
CMD ["run"]
