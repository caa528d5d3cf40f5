; Cove's Windows installer (Inno Setup 6). Built by installers/windows/build.ps1, which
; passes /DVersion=... /DBundle=<the PyInstaller folder> /DOut=<output folder>.
;
; * Per user: no administrator rights to install (PrivilegesRequired=lowest); files go to
;   %LOCALAPPDATA%\Programs\Cove and uninstall entries to HKCU.
; * "Start Cove when I sign in" (a task, on by default) writes the same HKCU Run value the
;   tray's Settings use (desktop/tray/autostart.py: value "Cove").
; * "Enable Hyper-V and Windows containers" (a task, off by default) asks for consent
;   twice: the unchecked box, then Windows' own elevation prompt for the one step that
;   needs it (DISM through PowerShell); a restart is left to the user.
; * DLL loading: Setup is Inno Setup's own program, which restricts its DLL search to
;   System32 before loading anything; this script adds no plugins and no [Code] DLL
;   imports, so nothing is loaded from the folder Setup was downloaded to. The workflow
;   checks that with canary DLLs planted beside the installer.
; * The user's data (%USERPROFILE%\.cove: settings, data disk) is never touched by
;   install, upgrade or uninstall; an upgrade replaces the app and its guest image.

#ifndef Version
  #error pass /DVersion=X.Y.Z
#endif
#ifndef Bundle
  #error pass /DBundle=path\to\dist\cove
#endif
#ifndef Out
  #define Out "."
#endif

[Setup]
AppId={{6C3B7E9A-2F41-4E0B-9D8A-C0FE0C0E0001}
AppName=Cove
AppVersion={#Version}
AppPublisher=Cove developers
DefaultDirName={autopf}\Cove
DefaultGroupName=Cove
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#Out}
OutputBaseFilename=Cove-{#Version}-setup
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
UninstallDisplayIcon={app}\cove-desktop.exe
CloseApplications=yes
; An upgrade runs over the previous install: the same AppId, files replaced in place.
UsePreviousAppDir=yes
MinVersion=10.0.17763

[Tasks]
Name: "autostart"; Description: "Start Cove when I sign in"; Flags: checkedonce
Name: "hyperv"; Description: "Enable Hyper-V and Windows containers (asks for administrator rights; restart needed)"; Flags: unchecked

[Files]
Source: "{#Bundle}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[InstallDelete]
; The previous version's guest image: the new one ships with this version.
Type: filesandordirs; Name: "{app}\images"

[Icons]
Name: "{userprograms}\Cove"; Filename: "{app}\cove-desktop.exe"

[Registry]
Root: HKCU; Subkey: "Software\Microsoft\Windows\CurrentVersion\Run"; ValueType: string; ValueName: "Cove"; ValueData: """{app}\cove-desktop.exe"""; Flags: uninsdeletevalue; Tasks: autostart

[Run]
Filename: "powershell.exe"; Parameters: "-NoProfile -ExecutionPolicy Bypass -Command ""Enable-WindowsOptionalFeature -Online -NoRestart -All -FeatureName Microsoft-Hyper-V-All,Containers"""; Verb: runas; Flags: shellexec waituntilterminated; StatusMsg: "Enabling Hyper-V and Windows containers..."; Tasks: hyperv
Filename: "{app}\cove-desktop.exe"; Description: "Start Cove now"; Flags: nowait postinstall skipifsilent

[UninstallRun]
; Stop this user's instances politely before the files go (the data stays in ~\.cove).
Filename: "{app}\cove.exe"; Parameters: "stop"; Flags: runhidden waituntilterminated; RunOnceId: "StopCove"
