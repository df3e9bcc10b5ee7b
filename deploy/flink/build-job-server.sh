#!/usr/bin/env bash
# deploy/flink/build-job-server.sh: makes sure the Beam Flink job-server uber jar
# (Beam $BEAM_VERSION for Flink $FLINK_MINOR, versions.env), with our patches
# (patches/), is in the cache, and prints its path on stdout (everything else
# goes to stderr). Used by local-cluster.sh start, by pipeline/runners.py (the
# FlinkRunner's --flink_job_server_jar) and by deploy/docker/submitter.Dockerfile.
#
#   deploy/flink/build-job-server.sh          fetch or build, then print the path
#   deploy/flink/build-job-server.sh --path   print where the jar goes, do nothing
#
# 1. A cached patched jar that runs and carries the current patches is used as is.
# 2. Otherwise it is made from the unpatched jar (step 3 to 5) and the patches
#    (step 6).
# 3. A cached unpatched jar that runs is used as is.
# 4. Otherwise the official org.apache.beam:beam-runners-flink-X-job-server jar
#    is downloaded from Maven Central, when it is served.
# 5. Otherwise the jar is built with Maven from job-server.pom.xml.in: the
#    runner (beam-runners-flink-X, which holds FlinkJobServerDriver and the
#    uber-jar entry point FlinkPipelineRunner), the job-service and expansion
#    service classes, the Flink client/runtime jars and an slf4j binding,
#    shaded into one jar (ServicesResourceTransformer merges META-INF/services,
#    which Beam's registrars and Flink's factories rely on).
#
# PITFALL: beam-runners-java-job-service is not served at 2.70.0 by the mirror
# we can reach (newest there: 2.65.0), although beam-runners-flink-1.19:2.70.0
# depends on it. That module is small (org.apache.beam.runners.jobsubmission:
# JobServerDriver, InMemoryJobService, PortablePipelineJarCreator, ...) and its
# API is stable, so the newest served version is used while every other Beam
# module stays at BEAM_VERSION.
#
# 6. The patches: patches/*.patch are applied to the Beam sources jars listed in
#    patches/sources.sha256 (from Maven Central, checked against those digests),
#    the patched classes are compiled with javac against the unpatched jar and
#    replace theirs in a copy of it, which gets META-INF/vpc-flow-peers-patches
#    (the digest of the patch files: a jar made from other patches is made
#    again). The patched jar's name ends in -vfp$JOB_SERVER_PATCH_LEVEL, which
#    pipeline/runners.py knows too: raise the level with any change to patches/,
#    so that no cache keeps using a jar made before it.
#
# Env:
#   VFP_CACHE            cache directory (default ~/.cache/vpc-flow-peers)
#   MAVEN_REPO_URL       Maven Central base URL (default https://repo.maven.apache.org/maven2)
#   JOB_SERVICE_VERSION  force a beam-runners-java-job-service version
#   FORCE_REBUILD=1      build even if a working jar is cached
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

VFP_CACHE="${VFP_CACHE:-$HOME/.cache/vpc-flow-peers}"
MAVEN_REPO_URL="${MAVEN_REPO_URL:-https://repo.maven.apache.org/maven2}"
ARTIFACT="beam-runners-flink-${FLINK_MINOR}-job-server"
JAR="$VFP_CACHE/${ARTIFACT}-${BEAM_VERSION}-vfp${JOB_SERVER_PATCH_LEVEL}.jar"
BASE_JAR="$VFP_CACHE/${ARTIFACT}-${BEAM_VERSION}.jar"   # as published (or built), unpatched
BUILD_DIR="$VFP_CACHE/job-server-build"
PATCHES_DIR="$HERE/patches"
PATCH_DIR="$VFP_CACHE/job-server-patch"   # the sources jars, and the patched classes while building
PATCH_MARKER=META-INF/vpc-flow-peers-patches
M2_REPO="$VFP_CACHE/m2-repository"   # a private local Maven repository, part of the cache

log() { echo "[build-job-server] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ "${1:-}" == --path ]]; then echo "$JAR"; exit 0; fi
[[ $# -eq 0 ]] || { echo "usage: $0 [--path]" >&2; exit 2; }

# FlinkJobServerDriver (args4j) has no --help option: it rejects it, prints its
# usage and exits 1. Seeing the usage proves the main class and its
# dependencies load from the jar.
jar_works() {
  [[ -s "$1" ]] || return 1
  local out
  out=$(java -cp "$1" org.apache.beam.runners.flink.FlinkJobServerDriver --help 2>&1 || true)
  [[ "$out" == *"--flink-master"* ]]
}

# The digest of the patch files, which the patched jar carries in PATCH_MARKER.
patches_digest() {
  (cd "$PATCHES_DIR" && sha256sum sources.sha256 ./*.patch) | sha256sum | cut -d' ' -f1
}

# A patched jar that runs and was made from the current patches.
patched_jar_works() {
  jar_works "$1" || return 1
  local marker
  marker=$(unzip -p "$1" "$PATCH_MARKER" 2>/dev/null || true)
  [[ "$marker" == "$(patches_digest)" ]]
}

# Whether Maven Central serves a URL (asks for the first bytes only).
served() {
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -r 0-10 "$1" || echo 000)
  [[ "$status" == 200 || "$status" == 206 ]]
}

command -v java >/dev/null || die "java (a JRE 11 or 17) is needed to run and check the job server"
mkdir -p "$VFP_CACHE"
# One build at a time (run_tests.sh starts one in the background; a test may
# ask for the jar meanwhile): a second caller waits, then finds the jar.
exec 9>"$VFP_CACHE/.job-server-build.lock"
flock 9

# Steps 4 and 5: the unpatched jar, downloaded or built with Maven, at BASE_JAR.
fetch_or_build_base_jar() {
  local official_url start v
  official_url="$MAVEN_REPO_URL/org/apache/beam/$ARTIFACT/$BEAM_VERSION/$ARTIFACT-$BEAM_VERSION.jar"
  if served "$official_url"; then
    log "downloading the official job-server jar: $official_url"
    curl -fsSL -o "$BASE_JAR.part.$$" "$official_url"
    mv -f "$BASE_JAR.part.$$" "$BASE_JAR"
    jar_works "$BASE_JAR" || die "the downloaded $BASE_JAR does not run"
    return 0
  fi
  log "the official job-server jar is not served; building it with Maven"
  command -v mvn >/dev/null || die "mvn (Apache Maven 3) is needed to build $ARTIFACT"

  if [[ -z "${JOB_SERVICE_VERSION:-}" ]]; then
    JOB_SERVICE_VERSION="$JOB_SERVICE_FALLBACK_VERSION"
    for v in "$BEAM_VERSION" 2.69.0 2.68.0 2.67.0 2.66.0; do
      if served "$MAVEN_REPO_URL/org/apache/beam/beam-runners-java-job-service/$v/beam-runners-java-job-service-$v.jar"; then
        JOB_SERVICE_VERSION=$v
        break
      fi
    done
  fi
  log "using beam-runners-java-job-service:$JOB_SERVICE_VERSION"

  mkdir -p "$BUILD_DIR"
  sed -e "s/@BEAM_VERSION@/$BEAM_VERSION/g" -e "s/@FLINK_MINOR@/$FLINK_MINOR/g" \
      -e "s/@FLINK_VERSION@/$FLINK_VERSION/g" -e "s/@JOB_SERVICE_VERSION@/$JOB_SERVICE_VERSION/g" \
      "$HERE/job-server.pom.xml.in" >"$BUILD_DIR/pom.xml"

  start=$(date +%s)
  log "mvn package in $BUILD_DIR (repository $M2_REPO, log $BUILD_DIR/mvn.log); a cold build downloads ~300 MB"
  if ! mvn -B -f "$BUILD_DIR/pom.xml" -Dmaven.repo.local="$M2_REPO" \
        -Dmaven.wagon.http.retryHandler.count=3 \
        -DskipTests -Dmaven.javadoc.skip=true clean package >"$BUILD_DIR/mvn.log" 2>&1; then
    tail -n 40 "$BUILD_DIR/mvn.log" >&2
    die "the Maven build failed (full log: $BUILD_DIR/mvn.log)"
  fi
  cp -f "$BUILD_DIR/target/${ARTIFACT}-${BEAM_VERSION}.jar" "$BASE_JAR.part.$$"
  mv -f "$BASE_JAR.part.$$" "$BASE_JAR"
  rm -rf "$BUILD_DIR/target"   # keep the pom, the log and the jar only
  jar_works "$BASE_JAR" || die "the built $BASE_JAR does not run FlinkJobServerDriver"
  log "built in $(( $(date +%s) - start ))s: $BASE_JAR ($(du -h "$BASE_JAR" | cut -f1))"
}

# Step 6: JAR is BASE_JAR with the patches compiled in.
patch_jar() {
  local tool
  for tool in javac jar patch unzip sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is needed to patch the job server (javac and jar: a JDK 11 or 17)"
  done
  mkdir -p "$PATCH_DIR"
  # Absolute paths: jar xf runs in another directory.
  local downloads work
  downloads="$(realpath "$PATCH_DIR")/downloads"
  work="$(realpath "$PATCH_DIR")/work.$$"
  trap 'rm -rf "$work" "$JAR.part.$$"' EXIT   # when a step fails (die)
  rm -rf "$work"
  mkdir -p "$downloads" "$work/src" "$work/classes/META-INF"
  local classpath sum path file
  classpath=$(realpath "$BASE_JAR")
  while read -r sum path; do
    [[ -n "$sum" && "$sum" != \#* ]] || continue
    if [[ "$path" == org/apache/beam/* && "$path" != */"$BEAM_VERSION"/* ]]; then
      die "patches/sources.sha256 names $path, not Beam $BEAM_VERSION: the patches must be redone (or dropped) for this version"
    fi
    file="$downloads/${path##*/}"
    if ! echo "$sum  $file" | sha256sum -c --status 2>/dev/null; then
      log "downloading $MAVEN_REPO_URL/$path"
      curl -fsSL -o "$file.part.$$" "$MAVEN_REPO_URL/$path"
      mv -f "$file.part.$$" "$file"
      echo "$sum  $file" | sha256sum -c --status || die "$file does not have the SHA-256 patches/sources.sha256 gives"
    fi
    case "$file" in
      *-sources.jar) (cd "$work/src" && jar xf "$file") ;;
      *) classpath="$classpath:$file" ;;  # needed to compile only (annotations)
    esac
  done <"$PATCHES_DIR/sources.sha256"
  local patch_file sources classes
  for patch_file in "$PATCHES_DIR"/*.patch; do
    log "applying $(basename "$patch_file")"
    patch -d "$work/src" -p1 --forward --batch --quiet <"$patch_file" >&2 \
      || die "$patch_file does not apply to the Beam $BEAM_VERSION sources"
  done
  # The patched sources: the files the patches name.
  mapfile -t sources < <(sed -n "s|^+++ b/\([^[:space:]]*\).*|$work/src/\1|p" "$PATCHES_DIR"/*.patch | sort -u)
  # Beam's classes are Java 8 bytecode; the patched ones are compiled to the same.
  javac --release 8 -Xlint:-options -nowarn -proc:none -encoding UTF-8 \
      -cp "$classpath" -d "$work/classes" "${sources[@]}" >&2 \
    || die "the patched sources do not compile against $BASE_JAR"
  classes=$(find "$work/classes" -name '*.class' | wc -l)
  patches_digest >"$work/classes/$PATCH_MARKER"
  cp -f "$BASE_JAR" "$JAR.part.$$"
  jar uf "$JAR.part.$$" -C "$work/classes" .
  patched_jar_works "$JAR.part.$$" || die "the patched jar does not run FlinkJobServerDriver"
  mv -f "$JAR.part.$$" "$JAR"
  rm -rf "$work"
  trap - EXIT
  log "patched ($classes classes compiled from ${#sources[@]} patched sources): $JAR"
}

if [[ "${FORCE_REBUILD:-0}" != 1 ]] && patched_jar_works "$JAR"; then
  log "cached and working: $JAR"
  echo "$JAR"
  exit 0
fi
if [[ "${FORCE_REBUILD:-0}" != 1 ]] && jar_works "$BASE_JAR"; then
  log "unpatched jar cached and working: $BASE_JAR"
else
  fetch_or_build_base_jar
fi
patch_jar
echo "$JAR"
