# syntax=docker/dockerfile:1
#
# Tessera's container images (deploy/README.md, "## Docker"). From the repository root:
#
#   docker build -t tessera:cuda .              # default target `cuda`: nvidia/cuda runtime,
#                                               # the GPU when one is passed in, else the CPU
#   docker build -t tessera:cpu --target cpu .  # CPU only, Debian 12, no CUDA at all
#
#   docker run --gpus all -p 8080:8080 tessera:cuda
#   docker run -p 8080:8080 tessera:cpu
#
# Each runs `tessera serve` on the default model (models/emoji-64, inside the image) on port
# 8080 as an unprivileged user (uid 10001). The build context is an allowlist
# (.dockerignore): the sources, the Makefile and the default model, nothing else.
# tests/test_deploy.py checks this file without docker (make test-python).
#
# Build arguments (--build-arg NAME=VALUE):
#   CUDA_VERSION, UBUNTU_VERSION  the nvidia/cuda images, devel to build and the matching
#                                 runtime to run (13.0.2 = the toolkit CI compiles with;
#                                 CUDA 13 needs an R580 or newer driver on the host)
#   CUDA_ARCH                     nvcc's -gencode flags (the Makefile's variable); the default
#                                 is the Makefile's: sm_90 code (H100/H200) + compute_90 PTX
#   DEBIAN_VERSION                the CPU image's Debian 12 point release
#   MARCH                         gcc -march= (the Makefile's x86-64-v3: AVX2 + FMA + F16C)
#   JOBS                          make -j (default: every core of the builder)
#   WERROR                        the CUDA stage builds with Ubuntu's gcc 13, which CI does not
#                                 run, so its warnings are not errors unless WERROR=-Werror

ARG CUDA_VERSION=13.0.2
ARG UBUNTU_VERSION=24.04
ARG DEBIAN_VERSION=12.12

# ---------------------------------------------------------------------------------------
# CPU only: build on Debian 12 with its own packages (scripts/install-deps.sh's), no CUDA.
# ---------------------------------------------------------------------------------------
FROM debian:${DEBIAN_VERSION}-slim AS cpu-build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev make pkg-config \
        libjansson-dev libmicrohttpd-dev libuv1-dev libpng-dev zlib1g-dev libopenblas-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY tools/embed_assets.c tools/
COPY web web/
COPY engine engine/
COPY scheduler scheduler/
COPY api api/
COPY server server/
ARG MARCH=x86-64-v3
ARG JOBS
RUN make CUDA=0 ARCH="-march=${MARCH}" -j"${JOBS:-$(nproc)}" build/tessera \
 && strip build/tessera

FROM debian:${DEBIAN_VERSION}-slim AS cpu
# The shared libraries build/tessera links (readelf -d) and curl for the HEALTHCHECK.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libjansson4 libmicrohttpd12 libuv1 libpng16-16 libopenblas0-pthread curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tessera
COPY --from=cpu-build /src/build/tessera /usr/local/bin/tessera
# The build fails here if a library the binary links is missing from this image.
RUN ! ldd /usr/local/bin/tessera | grep 'not found'
COPY models/emoji-64 /opt/tessera/models/emoji-64
USER 10001:10001
EXPOSE 8080
# SIGTERM drains: no new work (503), queued and running requests finish, exit 0. Give it
# time: docker stop -t 120, compose's stop_grace_period, k8s terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
# /health: 200 ready, 503 while loading (the start period covers a large model's load) and
# from SIGTERM on (draining).
HEALTHCHECK --interval=15s --timeout=5s --start-period=5m --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]
# Exec form: tessera is PID 1 and receives the stop signal itself (no shell in between).
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve", "--model", "/opt/tessera/models/emoji-64", "--host", "0.0.0.0", "--port", "8080"]

# ---------------------------------------------------------------------------------------
# CUDA: build on the CUDA devel image, run on the runtime image of the same version. The
# binary links cudart statically and libcublas from the runtime image; the driver
# (libcuda) comes from the host through the NVIDIA Container Toolkit (--gpus).
# ---------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS cuda-build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc g++ libc6-dev make pkg-config \
        libjansson-dev libmicrohttpd-dev libuv1-dev libpng-dev zlib1g-dev libopenblas-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY tools/embed_assets.c tools/
COPY web web/
COPY engine engine/
COPY scheduler scheduler/
COPY api api/
COPY server server/
ARG CUDA_ARCH="-gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90"
ARG MARCH=x86-64-v3
ARG JOBS
ARG WERROR=
RUN make CUDA=1 CUDA_HOME=/usr/local/cuda CUDA_ARCH="${CUDA_ARCH}" ARCH="-march=${MARCH}" \
        WERROR="${WERROR}" -j"${JOBS:-$(nproc)}" build/tessera \
 && strip build/tessera

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS cuda
# Ubuntu 24.04's names for the cpu stage's libraries (the 64-bit time_t renames: t64).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libjansson4 libmicrohttpd12t64 libuv1t64 libpng16-16t64 libopenblas0-pthread curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tessera
COPY --from=cuda-build /src/build/tessera /usr/local/bin/tessera
# The build fails here if a library the binary links is missing from this image.
RUN ! ldd /usr/local/bin/tessera | grep 'not found'
COPY models/emoji-64 /opt/tessera/models/emoji-64
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=5m --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve", "--model", "/opt/tessera/models/emoji-64", "--host", "0.0.0.0", "--port", "8080"]
