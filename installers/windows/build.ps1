# Build Cove's Windows installer (not run on the Linux build machine; see
# .github/workflows/package.yml).
#
#   installers\windows\build.ps1 -Image C:\path\to\amd64-<key> [-Version 0.2.0] [-Out build\windows]
#
# Needs: Python with Cove's dependencies and PyInstaller (pip install -e ".[package]"),
# and Inno Setup 6 (winget install JRSoftware.InnoSetup, or choco install innosetup).
# The guest image is built on Linux (cove image build) and passed in.
#
# QEMU is not carried: it comes from QEMU's Windows installer (winget install
# SoftwareFreedomConservancy.QEMU, into %ProgramFiles%\qemu, which Cove adds to its PATH);
# Cove checks for qemu-system-x86_64 at each start and names the fix when it is missing.
# With Hyper-V enabled, Cove can use its Hyper-V driver instead.
param(
    [Parameter(Mandatory = $true)][string]$Image,
    [string]$Version = "",
    [string]$Out = "",
    [string]$Python = "python",
    [string]$SignTool = ""   # e.g. "signtool sign /fd sha256 /a /tr http://timestamp.example /td sha256"
)
$ErrorActionPreference = "Stop"
$repo = Resolve-Path (Join-Path $PSScriptRoot "..\..")
if (-not $Out) { $Out = Join-Path $repo "build\windows" }
New-Item -ItemType Directory -Force -Path $Out | Out-Null
if (-not $Version) {
    $Version = & $Python -c "import re; print(re.search(r'__version__ = \""([^\""]+)\""', open(r'$repo\desktop\__init__.py').read()).group(1))"
}

$iscc = (Get-Command iscc.exe -ErrorAction SilentlyContinue).Source
if (-not $iscc) { $iscc = Join-Path ${env:ProgramFiles(x86)} "Inno Setup 6\ISCC.exe" }
if (-not (Test-Path $iscc)) { throw "Inno Setup 6 not found: winget install JRSoftware.InnoSetup" }

$t0 = Get-Date
$bundle = & $Python (Join-Path $repo "installers\bundle\build.py") --out (Join-Path $Out "bundle") --version $Version --arch amd64 --image $Image
if ($LASTEXITCODE -ne 0) { throw "the bundle could not be built (see above)" }
$bundle = $bundle.Trim()
if ($SignTool) {
    foreach ($exe in Get-ChildItem $bundle -Filter *.exe) { Invoke-Expression "$SignTool `"$($exe.FullName)`"" }
}

& $iscc /Qp "/DVersion=$Version" "/DBundle=$bundle" "/DOut=$Out" (Join-Path $PSScriptRoot "cove.iss")
if ($LASTEXITCODE -ne 0) { throw "ISCC failed" }
$setup = Join-Path $Out "Cove-$Version-setup.exe"
if ($SignTool) { Invoke-Expression "$SignTool `"$setup`"" }

$sw = [Diagnostics.Stopwatch]::StartNew()
& (Join-Path $bundle "cove.exe") version
$sw.Stop()
$mib = [math]::Round((Get-Item $setup).Length / 1MB, 1)
Write-Host ("installer: {0} MiB, built in {1:n0} s; cove version: {2:n2} s" -f $mib, ((Get-Date) - $t0).TotalSeconds, $sw.Elapsed.TotalSeconds)
Write-Output $setup
