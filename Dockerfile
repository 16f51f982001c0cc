# hyperlora for NVIDIA GPUs: built with --features cuda on the CUDA devel image, run on the runtime image of the
# same CUDA version. Models are never baked in: mount them (a ComfyUI models/ tree at /models, or set
# HYPERLORA_SDXL, HYPERLORA_HYPERLORA, HYPERLORA_CLIP, HYPERLORA_ANTELOPEV2). The embedded demo set needs no mount:
#   docker build -t hyperlora .
#   docker run --rm hyperlora                                   # the demo (CPU is enough)
#   docker run --rm --gpus all -v /srv/ComfyUI/models:/models:ro -v "$PWD/out:/work/out" \
#       hyperlora run /opt/hyperlora/scripts/sweep.rhai --set photos=/work/out/me.jpg --set out=/work/out/sweep
ARG CUDA_VERSION=13.0.0
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG RUST_VERSION=1.95.0
# the GPU generation the kernels are compiled for (90: H100/H200; 89: L40/4090; 80: A100); no GPU at build time
ARG CUDA_COMPUTE_CAP=90
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
ENV PATH=/root/.cargo/bin:${PATH} \
    CUDA_HOME=/usr/local/cuda \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
WORKDIR /src
COPY . .
RUN cargo build --release --locked --features cuda --bin hyperlora

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
COPY --from=build /src/target/release/hyperlora /usr/local/bin/hyperlora
COPY scripts /opt/hyperlora/scripts
RUN useradd --create-home --uid 10001 hyperlora \
    && mkdir -p /work /models \
    && chown hyperlora /work
USER hyperlora
WORKDIR /work
ENV HYPERLORA_COMFYUI=/models
ENTRYPOINT ["hyperlora"]
CMD ["demo", "--preview", "never"]
