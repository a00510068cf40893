#!/usr/bin/env bash
# install-deps.sh [--kafka kraft] - installs what sheaf needs to build, test
# and run its dev stack on Debian 12, and nothing that is already there.
# Idempotent: runs `apt-get update` once, only when something is missing.
# Needs root (or sudo) only when it has something to install.
#
# --kafka kraft (or kraft3, or SHEAF_DEV_KAFKA=kraft|kraft3 in the
# environment) is for a real Kafka broker (dev/stack.sh up --kafka kraft,
# the real-broker tests): it adds a Java runtime and Maven, then fills the
# broker's jar cache once (dev/kafka-kraft.sh jars: Maven Central, about
# 90 MB in ~/.cache/sheaf).  Without it nothing Java is installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

kafka=${SHEAF_DEV_KAFKA:-mock}
while [ $# -gt 0 ]; do
  case "$1" in
    --kafka) kafka="${2:-}"; shift 2 ;;
    *) echo "install-deps: unknown argument '$1' (--kafka kraft)" >&2; exit 2 ;;
  esac
done
case "$kafka" in
  mock | kraft | kraft3) ;;
  *) echo "install-deps: --kafka: mock, kraft or kraft3, got '$kafka'" >&2; exit 2 ;;
esac

PACKAGES=(
  build-essential cmake pkg-config          # compiler, make, CMake >= 3.25
  librdkafka-dev                            # Kafka client (and its mock cluster)
  libcurl4-openssl-dev                      # HTTP client for the LLM API
  libmsgpack-dev                            # msgpack-c: the chunk message codec
  libhiredis-dev                            # Redis client
  libevent-dev                              # the runtime's event loop (libevent 2.1)
  libjansson-dev                            # JSON for the HTTP API and records
  libssl-dev                                # OpenSSL's digests, to check ours (test_sha)
  libmicrohttpd-dev                         # HTTP server of the LLM simulator
  libcmocka-dev                             # unit test framework
  redis-server                              # real Redis for the dev stack and tests
  kcat jq curl                              # tests read topics and JSON like a user would
  python3 python3-yaml                      # test clients (bad-input catalogue); deploy/validate.py reads YAML
  iproute2 procps                           # it_netns (ip netns) and process checks in tests
  valgrind                                  # tests run a worker and a reducer under it
  poppler-utils                             # pdftotext: the producer reads *.pdf through it
  clang                                     # fuzz targets (clang 14) ...
  libclang-rt-14-dev                        # ... and its libFuzzer runtime (libclang_rt.fuzzer-x86_64.a),
                                            # only a Recommends of clang-14, which --no-install-recommends skips
)
if [ "$kafka" != mock ]; then
  PACKAGES+=(
    openjdk-17-jre-headless                 # a real Kafka broker (dev/kafka-kraft.sh) ...
    maven                                   # ... whose jars come from Maven Central
  )
fi

# kraft: the broker's jars, once (no network when they are cached).
kafka_jars() {
  if [ "$kafka" != mock ]; then "$ROOT/dev/kafka-kraft.sh" jars >/dev/null; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: everything needed is installed" >&2
  kafka_jars
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install-deps: missing packages: ${missing[*]}" >&2
    echo "install-deps: run as root (or install sudo) to install them" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
kafka_jars
