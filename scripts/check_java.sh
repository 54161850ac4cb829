#!/usr/bin/env bash
# TorchServe's frontend is Java: require a JDK/JRE 17 or newer.
set -u
if ! command -v java >/dev/null 2>&1; then
  echo "ERROR: java not found. TorchServe needs Java 17+." >&2
  echo "  Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless" >&2
  echo "  macOS:         brew install openjdk@17" >&2
  exit 1
fi
version=$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
if [ -z "$major" ] || [ "$major" -lt 17 ] 2>/dev/null; then
  echo "ERROR: java $version found, TorchServe needs Java 17+ (e.g. apt-get install openjdk-17-jre-headless)." >&2
  exit 1
fi
