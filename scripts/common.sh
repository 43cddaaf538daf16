# Sourced by the evaluation scripts, from the repository root.
DSSM=${DSSM:-.venv/bin/dssm}

# The dataset a bundled model was trained on, as its model.json records it (dssm evaluate then takes the
# validation cases from the split recorded there).
model_data() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["training"]["data"])' \
    "DSSMSegment/Resources/Models/$1/model.json"
}
