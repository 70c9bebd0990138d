#!/usr/bin/env bash
# ansible-test sanity needs the collection at .../ansible_collections/berth/stack. Copy the files
# git tracks (plus new, unignored ones) into a temporary tree of that shape and run it there,
# so the repository never moves and no build output lands in it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/berth-sanity.XXXXXX")"
trap 'rm -rf "$work"' EXIT
dest="$work/ansible_collections/berth/stack"
mkdir -p "$dest"
cd "$repo"
# Not the links that make a clone find the collection (collections/, playbooks/collections): inside
# ansible_collections/berth/stack they would loop, and the built tarball leaves them out as well.
git ls-files -z --cached --others --exclude-standard \
  | grep -zv -e '^collections/ansible_collections/' -e '^playbooks/collections$' \
  | rsync -a --from0 --files-from=- --ignore-missing-args ./ "$dest/"
cd "$dest"
# ansible-test reads the file list from git when it finds a repository.
git init -q && git add -A
python_version="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
ansible-test sanity --local --requirements --python "$python_version" --color no "$@"
