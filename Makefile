# Tessera - one flat Makefile. `make` builds build/tessera; `make test` builds and runs
# every test; `make test SANITIZE=1` runs them under AddressSanitizer + UBSan (in
# build-san/). Dependencies: scripts/install-deps.sh.
#
# The CUDA backend (engine/cuda/) is built when nvcc is found (on the PATH or in
# /usr/local/cuda); CUDA=0 leaves it out, CUDA=1 insists on it. The sanitizer build
# leaves it out unless CUDA=1 is given (ASan and the CUDA driver disagree over memory).

CC      ?= gcc
PYTHON  ?= /usr/bin/python3
SANITIZE ?= 0
WERROR  ?= -Werror

ifeq ($(SANITIZE),1)
BUILD   ?= build-san
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
LDSAN   := -fsanitize=address,undefined
else
BUILD   ?= build
OPT     := -O2 -g
LDSAN   :=
endif

# x86-64-v3 = AVX2 + FMA + F16C (Haswell, 2013, and later); override with ARCH= for older CPUs.
ifeq ($(shell uname -m),x86_64)
ARCH    ?= -march=x86-64-v3
endif

BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/x86_64-linux-gnu/openblas-pthread)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
CHECK_LIBS  := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lm -pthread)

CFLAGS  = -std=c11 -D_GNU_SOURCE $(OPT) $(ARCH) -Wall -Wextra $(WERROR) -MMD -MP -I. $(BLAS_CFLAGS) $(CFLAGS_CUDA) $(EXTRA_CFLAGS)
LDLIBS  = -ljansson -lpng $(BLAS_LIBS) $(CUDA_LIBS) -lm -pthread
SERVER_LIBS := -lmicrohttpd -luv

CUDA_HOME ?= /usr/local/cuda
NVCC    ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard $(CUDA_HOME)/bin/nvcc))
ifeq ($(SANITIZE),1)
CUDA    ?= 0
else
CUDA    ?= $(if $(NVCC),1,0)
endif
# sm_90 machine code for Hopper, plus PTX that newer GPUs compile at load time.
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCCFLAGS := -std=c++17 -O3 $(CUDA_ARCH) -I. -Xcompiler -Wall,-Wextra -MMD -MP $(EXTRA_NVCCFLAGS)

ENGINE_SRC := $(wildcard engine/*.c engine/cpu/*.c engine/models/*.c engine/text/*.c)
ifeq ($(CUDA),1)
ifeq ($(NVCC),)
$(error CUDA=1 but nvcc was not found (PATH or $(CUDA_HOME)/bin))
endif
ENGINE_SRC += engine/cuda/backend_cuda.c
CU_SRC     := $(wildcard engine/cuda/*.cu)
CFLAGS_CUDA := -I$(CUDA_HOME)/include -DTS_HAVE_CUDA=1
CUDA_LIBS  := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart_static -ldl -lrt -lstdc++
else
ENGINE_SRC += engine/cuda/backend_cuda_none.c
CU_SRC     :=
CFLAGS_CUDA :=
CUDA_LIBS  :=
endif
API_SRC    := $(wildcard api/*.c)
SCHED_SRC  := $(wildcard scheduler/*.c)
SERVER_SRC := $(wildcard server/*.c)
LIB_SRC    := $(ENGINE_SRC) $(SCHED_SRC) $(API_SRC)

LIB_OBJ    := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/web_assets.o
WEB_FILES  := $(sort $(wildcard web/*.html web/*.js web/*.css web/*.png web/*.svg web/*.ico))
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test test-c test-python test-web test-gpu test-fuzz test-soak fuzz fuzz-build clean run sample format

all: $(BUILD)/tessera

$(BUILD)/tessera: $(SERVER_OBJ) $(BUILD)/libtessera.a
	$(CC) $(LDSAN) -o $@ $^ $(LDLIBS) $(SERVER_LIBS)

# The web page is compiled into the binary (tools/embed_assets.c), so it needs no files.
$(BUILD)/tools/embed_assets: tools/embed_assets.c
	@mkdir -p $(dir $@)
	$(CC) -O1 -o $@ $<

$(BUILD)/gen/web_assets.c: $(WEB_FILES) $(BUILD)/tools/embed_assets
	@mkdir -p $(dir $@)
	$(BUILD)/tools/embed_assets $@ web $(WEB_FILES)

$(BUILD)/gen/web_assets.o: $(BUILD)/gen/web_assets.c
	$(CC) $(CFLAGS) -c $< -o $@

# A stamp of the CUDA setting, so that switching CUDA=0/1 rebuilds the library.
CONFIG_STAMP := $(BUILD)/.config-cuda$(CUDA)
$(CONFIG_STAMP):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/.config-cuda* && touch $@

$(BUILD)/libtessera.a: $(LIB_OBJ) $(CONFIG_STAMP)
	rm -f $@ && ar rcs $@ $(LIB_OBJ)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/libtessera.a
	$(CC) $(LDSAN) -o $@ $^ $(LDLIBS) $(CHECK_LIBS)

# Every test binary runs from the repository root (fixtures are found relative to it).
test: test-c test-python test-web test-fuzz test-soak

test-c: $(TEST_BIN) $(BUILD)/tessera
	@set -e; for t in $(TEST_BIN); do echo "== $$t"; ./$$t; done

# The CLI as a user drives it, the converter against official-layout checkpoints, and the
# CLI end to end against the PyTorch reference (needs python3-torch: scripts/install-deps.sh);
# the CLIP tokenizer's reference and fixtures (on the real vocabulary too when
# TESSERA_CLIP_VOCAB names bpe_simple_vocab_16e6.txt.gz); T5's converter, sentencepiece
# tokenizer (against python3-sentencepiece) and caption cleaning (against its reference).
test-python: $(BUILD)/tessera $(BUILD)/tests/test_clip_tokenizer $(BUILD)/tests/test_spm \
             $(BUILD)/tests/test_t5_clean
	$(PYTHON) tests/test_cli.py $(BUILD)/tessera
	$(PYTHON) tests/reference/test_convert.py $(BUILD)/tessera
	$(PYTHON) tests/reference/test_convert_t5.py
	$(PYTHON) tests/reference/test_clip_tokenizer.py $(BUILD)/tests/test_clip_tokenizer
	$(PYTHON) tests/reference/test_spm.py $(BUILD)/tests/test_spm
	$(PYTHON) tests/reference/test_t5_clean.py $(BUILD)/tests/test_t5_clean
	$(PYTHON) tests/test_server.py $(BUILD)/tessera
	$(PYTHON) tests/test_lb.py $(BUILD)/tessera
	$(PYTHON) tests/test_default_model.py $(BUILD)/tessera
	$(PYTHON) tests/test_deploy.py $(BUILD)/tessera

# Many clients for SOAK_SECONDS against one server running every family, with disconnects,
# cancels, a full queue and hostile input (tests/soak.py); it ends with no KV block held,
# no 5xx and a clean drain. It matters under the sanitizers, so `make test` runs it only
# with SANITIZE=1 (where LeakSanitizer turns any leak into a failure); `make test-soak`
# runs it on the normal build.
SOAK_SECONDS ?= 150
ifeq ($(SANITIZE),1)
test-soak: $(BUILD)/tessera
	$(PYTHON) tests/soak.py $(BUILD)/tessera --seconds $(SOAK_SECONDS)
else
test-soak:
	@if [ "$(filter test-soak,$(MAKECMDGOALS))" ]; then $(MAKE) --no-print-directory $(BUILD)/tessera && \
	    $(PYTHON) tests/soak.py $(BUILD)/tessera --seconds $(SOAK_SECONDS); \
	else echo "test-soak: runs in make test SANITIZE=1 (or make test-soak)"; fi
endif

# On a machine with an NVIDIA GPU: the CUDA kernels against the CPU backend, then the
# server's whole suite with --device cuda (both say so and skip the GPU parts without one).
test-gpu: $(BUILD)/tests/test_cuda $(BUILD)/tessera
	./$(BUILD)/tests/test_cuda
	TESSERA_TEST_DEVICE=cuda $(PYTHON) tests/test_server.py $(BUILD)/tessera

# The web page in headless Chromium and the official OpenAI Node SDK, against the real server.
test-web: $(BUILD)/tessera
	bash tests/web/run.sh $(BUILD)/tessera

# libFuzzer targets (tests/fuzz/fuzz_*.c; tests/fuzz/README.md), built with clang and its
# own sanitizers into build-fuzz/ (no CUDA). `make fuzz FUZZ_SECONDS=600` runs each target
# that long on its committed corpus (tests/fuzz/corpus/<target>/, only read) plus a scratch
# one in build-fuzz/corpus/ that keeps what it finds; crashes, slow inputs (-timeout) and
# memory blow-ups (-rss_limit_mb) fail it, with the input in build-fuzz/artifacts/.
# `make test` runs them FUZZ_SECONDS (20) each as test-fuzz, except under SANITIZE=1; it
# skips them, saying so, when clang cannot link libFuzzer.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 20
FUZZ_FLAGS   ?= -timeout=10 -rss_limit_mb=2048
FUZZ_NAMES   := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN     := $(FUZZ_NAMES:%=build-fuzz/fuzz/%)

# (made by the fuzz-build sub-make, where BUILD is build-fuzz and CC clang)
build-fuzz/fuzz/%: tests/fuzz/%.c build-fuzz/libtessera.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< build-fuzz/libtessera.a $(LDLIBS)

fuzz-build:
	$(MAKE) BUILD=build-fuzz CC=$(FUZZ_CC) CUDA=0 SANITIZE=0 \
	    OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" \
	    $(FUZZ_BIN)

fuzz: fuzz-build
	@mkdir -p build-fuzz/artifacts; failed=""; \
	for t in $(FUZZ_NAMES); do \
	    echo "== $$t: $(FUZZ_SECONDS) s"; mkdir -p build-fuzz/corpus/$$t; \
	    dict=""; [ -f tests/fuzz/$$t.dict ] && dict="-dict=tests/fuzz/$$t.dict"; \
	    if ./build-fuzz/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) $(FUZZ_FLAGS) $$dict \
	        -artifact_prefix=build-fuzz/artifacts/$$t- build-fuzz/corpus/$$t tests/fuzz/corpus/$$t \
	        > build-fuzz/$$t.log 2>&1; then grep -E '^Done' build-fuzz/$$t.log; \
	    else tail -n 40 build-fuzz/$$t.log; failed="$$failed $$t"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed (logs in build-fuzz/, inputs in build-fuzz/artifacts/)"; exit 1; fi

test-fuzz:
ifeq ($(SANITIZE),1)
	@echo "test-fuzz: skipped under SANITIZE=1 (the fuzz build has its own sanitizers: make fuzz)"
else
	@if printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
	    | $(FUZZ_CC) -x c -fsanitize=fuzzer -o /dev/null - 2>/dev/null; then \
	    $(MAKE) fuzz; \
	else \
	    echo "test-fuzz: SKIPPED: $(FUZZ_CC) cannot link libFuzzer (scripts/install-deps.sh installs clang)"; \
	fi
endif

# Serves the default model that ships in models/ (64x64 emoji, trained by
# tools/train_default.sh) on http://$(HOST):$(PORT)/ - the web page, the REST API and
# SSE previews. MODEL=DIR serves another model folder.
HOST ?= 127.0.0.1
PORT ?= 8080
MODEL ?= models/emoji-64
run: $(BUILD)/tessera
	@echo "Open http://$(HOST):$(PORT)/ (Ctrl-C drains and stops)."
	./$(BUILD)/tessera serve --model $(MODEL) --host $(HOST) --port $(PORT)

# One PNG from the default model with the CLI: a red apple.
sample: $(BUILD)/tessera
	./$(BUILD)/tessera generate --model $(MODEL) --class "red apple" --seed 0 --out sample.png

format:
	clang-format -i $(LIB_SRC) $(SERVER_SRC) $(TEST_SRC) $(wildcard engine/*.h engine/*/*.h api/*.h server/*.h tests/*.h)

clean:
	rm -rf build build-san build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
