using System.Diagnostics;
using System.Text.Json.Nodes;
using Haven.Testing;

namespace Haven.Cli.Tests;

/// <summary>The result of one <c>haven</c> process.</summary>
public sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public JsonNode Json => JsonNode.Parse(Stdout) ?? throw new InvalidOperationException("no JSON on stdout: " + Stderr);

    public override string ToString() => $"exit {ExitCode}\nstdout: {Stdout}\nstderr: {Stderr}";
}

/// <summary>
/// Runs the real <c>haven</c> executable (built next to this test assembly) against a scratch repository, the way a
/// user or a script would: environment variables for repository and password, no terminal.
/// </summary>
public sealed class HavenCli : IDisposable
{
    public HavenCli()
    {
        Root = Path.Combine(Path.GetTempPath(), "haven-cli-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Root);
        Repository = Path.Combine(Root, "repo");
        Source = Path.Combine(Root, "src");
        Directory.CreateDirectory(Source);
        PasswordFile = Path.Combine(Root, "password");
        File.WriteAllText(PasswordFile, "correct horse battery staple\n");
        CacheDir = Path.Combine(Root, "cache");
        Environment = new Dictionary<string, string>
        {
            ["HAVEN_REPOSITORY"] = Repository,
            ["HAVEN_PASSWORD_FILE"] = PasswordFile,
            ["HAVEN_CACHE_DIR"] = CacheDir,
            ["HAVEN_PROGRESS_INTERVAL"] = "1",
        };
    }

    public string Root { get; }

    public string Repository { get; }

    public string Source { get; }

    public string PasswordFile { get; }

    public string CacheDir { get; }

    public Dictionary<string, string> Environment { get; }

    /// <summary>Runs haven as this user id (through setpriv), e.g. to meet permission errors that root never sees.</summary>
    public int? RunAsUser { get; set; }

    /// <summary>The apphost next to haven.dll in this test's output folder.</summary>
    public static string Executable
    {
        get
        {
            var path = Path.Combine(AppContext.BaseDirectory, "haven");
            return File.Exists(path) ? path : throw new FileNotFoundException("haven executable not found next to the tests", path);
        }
    }

    public Process Start(params string[] args)
    {
        var psi = new ProcessStartInfo(RunAsUser is null ? Executable : "setpriv")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        if (RunAsUser is { } uid)
        {
            foreach (var a in new[] { $"--reuid={uid}", $"--regid={uid}", "--clear-groups", Executable })
            {
                psi.ArgumentList.Add(a);
            }
        }

        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        psi.Environment.Remove("HAVEN_PASSWORD");
        psi.Environment.Remove("HAVEN_PASSWORD_COMMAND");
        psi.Environment.Remove("HAVEN_PASSWORD_FILE");
        psi.Environment.Remove("HAVEN_REPOSITORY");
        foreach (var (k, v) in Environment)
        {
            psi.Environment[k] = v;
        }
        var p = Process.Start(psi)!;
        p.StandardInput.Close();
        return p;
    }

    public CliResult Run(params string[] args) => RunAsync(args).GetAwaiter().GetResult();

    public async Task<CliResult> RunAsync(params string[] args)
    {
        using var p = Start(args);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(5));
        try
        {
            await p.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true); // never leave a hung process (a server that should have refused to start) behind
            throw new TimeoutException($"haven {string.Join(' ', args)} ran for 5 minutes; killed. Output so far: {await stdout}{await stderr}");
        }

        return new CliResult(p.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs and asserts the exit code, showing the output when it differs.</summary>
    public CliResult Expect(int exitCode, params string[] args)
    {
        var r = Run(args);
        if (r.ExitCode != exitCode)
        {
            throw new Xunit.Sdk.XunitException($"haven {string.Join(' ', args)}: expected exit {exitCode}, got {r}");
        }

        return r;
    }

    /// <summary>Restores the latest snapshot (of <paramref name="host"/>, if given) and asserts it equals <paramref name="source"/>.</summary>
    public void ExpectLatestRestoresAs(string source, string? host = null)
    {
        var target = Path.Combine(Root, "out-" + (host ?? "latest"));
        Expect(0, host is null ? ["restore", "latest", "--target", target] : ["restore", "latest", "--host", host, "--target", target]);
        AssertRestored(source, target);
    }

    /// <summary>Asserts that <paramref name="target"/> holds a restore of <paramref name="source"/> (at its full path).</summary>
    public static void AssertRestored(string source, string target, CompareOptions? options = null)
    {
        var differences = TestTree.Compare(source, target + source, options ?? new CompareOptions(Ownership: false));
        if (differences.Count > 0)
        {
            throw new Xunit.Sdk.XunitException("restore differs: " + string.Join("\n", differences.Take(20)));
        }
    }

    public void Dispose() => TestTree.DeleteTree(Root);
}
