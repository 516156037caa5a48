using System.Diagnostics;
using System.Security.Cryptography.X509Certificates;
using Haven.Protocol;

namespace Haven.Cli.Tests;

/// <summary>A running server and what it printed at start (on its first start, the administrator's token too).</summary>
internal sealed class RunningServer : IDisposable
{
    private readonly Process _process;
    private readonly Task<string> _stderr;

    public RunningServer(HavenCli cli, string? database, bool firstStart = true, string listen = "127.0.0.1:0", params string[] extra)
    {
        Data = Path.Combine(cli.Root, "server");
        var args = new List<string> { "server", "--data", Data, "--listen", listen };
        if (database is not null)
        {
            args.AddRange(["--database", database]);
        }

        args.AddRange(extra);

        _process = cli.Start([.. args]);
        _stderr = _process.StandardError.ReadToEndAsync();
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var output = new List<string>();
        while (firstStart ? Token is null : Fingerprint is null)
        {
            string? line;
            try
            {
                line = _process.StandardOutput.ReadLineAsync(deadline.Token).AsTask().GetAwaiter().GetResult();
            }
            catch (OperationCanceledException)
            {
                line = null;
            }

            if (line is null)
            {
                // Killed first, so its error output ends and nothing is left running.
                Kill();
                throw new InvalidOperationException("the server did not start within 60 s: " + _stderr.Result);
            }

            output.Add(line);
            if (line.StartsWith("Haven server ", StringComparison.Ordinal))
            {
                Url = line[(line.IndexOf(" on ", StringComparison.Ordinal) + 4)..].Trim();
            }
            else if (line.Trim().StartsWith("CA fingerprint:", StringComparison.Ordinal))
            {
                Fingerprint = line.Split(':', 2)[1].Trim();
            }
            else if (line.Trim().StartsWith("API token:", StringComparison.Ordinal))
            {
                Token = line.Split(':', 2)[1].Trim();
            }
        }

        Output = string.Join('\n', output);
        cli.Environment["HAVEN_SERVER"] = Url!;
        cli.Environment["HAVEN_SERVER_CA"] = Fingerprint!;
        if (Token is not null)
        {
            cli.Environment["HAVEN_ADMIN_TOKEN"] = Token;
        }

        _ = Task.Run(() => _process.StandardOutput.ReadToEnd());
    }

    public string Data { get; }

    public string Output { get; }

    public string? Url { get; private set; }

    public string? Fingerprint { get; private set; }

    public string? Token { get; private set; }

    public HttpClient Http(X509Certificate2? clientCertificate = null, string? bearer = null)
    {
        var handler = new SocketsHttpHandler();
        handler.SslOptions.RemoteCertificateValidationCallback = Pinning.ServerValidator(X509Certificate2.CreateFromPem(File.ReadAllText(Path.Combine(Data, "ca", "ca.pem"))));
        if (clientCertificate is not null)
        {
            handler.SslOptions.LocalCertificateSelectionCallback = (_, _, _, _, _) => clientCertificate;
        }

        var http = new HttpClient(handler) { BaseAddress = new Uri(Url!) };
        if (bearer is not null)
        {
            http.DefaultRequestHeaders.Authorization = new("Bearer", bearer);
        }

        return http;
    }

    /// <summary>The default tenant's repository on this server, as an administrator names it.</summary>
    public string HostedRepository => $"haven:{Url}default";

    /// <summary>
    /// Enrols an agent named <paramref name="name"/> in the default tenant with a token that carries the repository
    /// key (the repository must exist); returns the token and the agent's state folder.
    /// </summary>
    public (string Token, string State) Enrol(HavenCli cli, string name)
    {
        string token = cli.Expect(0, "admin", "token-create", "--tenant", "default", "--client", name, "--repository-key").Stdout.Trim();
        string state = Path.Combine(cli.Root, "agent-" + name);
        cli.Expect(0, "agent", "enroll", "--server", Url!, "--token", token, "--state", state);
        return (token, state);
    }

    /// <summary>Kills the server at once (kill -9), as a crash or power cut would.</summary>
    public void Kill()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }
    }

    /// <summary>A free TCP port on loopback, for a server that must come back on the same address.</summary>
    public static int FreePort()
    {
        using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        return ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
    }
}
