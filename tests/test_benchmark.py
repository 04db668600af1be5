# Copyright (c) cmr-synth contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
from __future__ import annotations

import pytest

from cmrsynth.benchmark import replace_marked


def test_replace_marked_rewrites_only_between_markers(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("# t\n<!-- table -->\nold\n<!-- /table -->\nafter\n")
    replace_marked(doc, "table", "| a |\n")
    replace_marked(doc, "table", "| b |")  # idempotent on its own output
    assert doc.read_text() == "# t\n<!-- table -->\n| b |\n<!-- /table -->\nafter\n"
    with pytest.raises(ValueError, match="markers <!-- other --> ... <!-- /other --> not found"):
        replace_marked(doc, "other", "x")
