using System.Diagnostics;

namespace Haven.Images;

/// <summary>Runs a system tool (losetup, e2fsck, lvcreate, ...) to its end and returns its exit code and output.</summary>
internal static class Tool
{
    /// <summary>The exit code (127 when the tool cannot be started) and standard output followed by standard error.</summary>
    public static (int Code, string Output) Run(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment["LVM_SUPPRESS_FD_WARNINGS"] = "1"; // LVM tools complain about descriptors they inherit
        try
        {
            using var process = Process.Start(psi)!;
            var stderr = process.StandardError.ReadToEndAsync();
            string stdout = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, stdout + stderr.GetAwaiter().GetResult());
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (127, $"{tool} cannot be run: {e.Message}");
        }
    }

    /// <summary>The last line of a tool's output, for messages.</summary>
    public static string LastLine(string output) => output.Trim().Split('\n').LastOrDefault()?.Trim() ?? "";
}
