"""Peers of the browser test: Orthanc with DICOMweb, OHIF's prebuilt viewer served statically, headless Chromium.

OHIF's page and Orthanc's DICOMweb are served from one origin (the viewer server forwards /dicom-web/ to
Orthanc), so the browser needs no CORS. tools/setup --dev installs the viewer into tools/viewer.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.node_peers import REPO, Orthanc, free_port

VIEWER = REPO / "tools" / "viewer"
OHIF_DIST = VIEWER / "ohif" / "package" / "dist"
DRIVER = REPO / "tests" / "viewer" / "ohif_driver.mjs"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class DicomWebOrthanc(Orthanc):
    """Orthanc with the orthanc-dicomweb plugin (QIDO/WADO/STOW under /dicom-web/)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        assert DICOMWEB_PLUGIN.exists(), "orthanc-dicomweb is not installed; run tools/setup --dev"
        config = json.loads((folder / "orthanc.json").read_text())
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
        (folder / "orthanc.json").write_text(json.dumps(config))

    def upload(self, path: Path) -> str:
        """POST one file to Orthanc's REST API; its Orthanc instance id."""
        request = urllib.request.Request(self.url + "/instances", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert answer.get("Status") in {"Success", "AlreadyStored"}, answer
        return str(answer["ID"])


def app_config(data_root: str) -> str:
    """OHIF's window.config: one DICOMweb data source at ``data_root`` (same origin), no prompts skipped."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc", "name": "orthanc",
            "wadoUriRoot": data_root, "qidoRoot": data_root, "wadoRoot": data_root,
            "qidoSupportsIncludeField": False, "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
            "dicomUploadEnabled": False, "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {"routerBasename": "/", "showStudyList": True, "extensions": [], "modes": [],
              "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": False,
              "investigationalUseDialog": {"option": "never"}, "maxNumberOfWebWorkers": 2,
              "defaultDataSourceName": "orthanc", "dataSources": [source]}
    return "window.config = " + json.dumps(config, indent=1) + ";\n"


class ViewerServer:
    """OHIF's dist over HTTP on a free loopback port; /dicom-web/ is forwarded to Orthanc."""

    def __init__(self, orthanc: Orthanc) -> None:
        assert (OHIF_DIST / "index.html").exists(), f"OHIF viewer missing in {OHIF_DIST}; run tools/setup --dev"
        self.port = free_port()
        config = app_config(f"http://127.0.0.1:{self.port}/dicom-web").encode()
        upstream = orthanc.url

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(OHIF_DIST), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/dicom-web/"):
                    self._forward()
                elif path == "/app-config.js":
                    self._send(200, "application/javascript", config)
                elif (OHIF_DIST / path.lstrip("/")).is_file():
                    super().do_GET()
                else:  # the viewer's client-side routes (/viewer?StudyInstanceUIDs=...)
                    self._send(200, "text/html", (OHIF_DIST / "index.html").read_bytes())

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in {"accept", "host"}}
                request = urllib.request.Request(upstream + self.path, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, body = response.status, response.read()
                        content_type = response.headers.get("Content-Type", "application/octet-stream")
                except urllib.error.HTTPError as error:
                    status, body = error.code, error.read()
                    content_type = error.headers.get("Content-Type", "text/plain")
                self._send(status, content_type, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ViewerServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_driver(request: dict[str, Any], out_dir: Path, timeout: float = 120) -> dict[str, Any]:
    """Run the puppeteer driver (tests/viewer/ohif_driver.mjs) on one JSON request; its JSON answer."""
    node = shutil.which("node")
    chromium = shutil.which("chromium")
    assert node and chromium, "node and chromium are needed; run tools/setup --dev"
    assert (VIEWER / "node_modules" / "puppeteer-core").is_dir(), "puppeteer-core missing; run tools/setup --dev"
    out_dir.mkdir(parents=True, exist_ok=True)
    request_path = out_dir / "request.json"
    request_path.write_text(json.dumps({**request, "chromium": chromium, "outDir": str(out_dir),
                                        "modules": str(VIEWER)}))
    result = subprocess.run([node, str(DRIVER), str(request_path)], capture_output=True, text=True,
                            timeout=timeout, env={"PATH": "/usr/bin:/bin", "HOME": str(out_dir)})
    (out_dir / "driver.log").write_text(result.stdout + result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and lines, f"driver failed ({result.returncode}):\n{result.stdout[-3000:]}" \
                                             f"\n{result.stderr[-3000:]}"
    return dict(json.loads(lines[-1]))
