using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Haven.Cli.Tests;

/// <summary>A <c>haven agent run</c> process; its log is kept for assertions and failure messages.</summary>
internal sealed class RunningAgent : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _log = new();

    public RunningAgent(HavenCli cli, string state)
    {
        State = state;
        _process = cli.Start("agent", "run", "--state", state);
        _process.OutputDataReceived += (_, e) => Append(e.Data);
        _process.ErrorDataReceived += (_, e) => Append(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public string State { get; }

    public string Log
    {
        get
        {
            lock (_log)
            {
                return _log.ToString();
            }
        }
    }

    private void Append(string? line)
    {
        if (line is not null)
        {
            lock (_log)
            {
                _log.AppendLine(line);
            }
        }
    }

    /// <summary>kill -9: the agent gets no chance to report.</summary>
    public void Kill()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
    }
}

/// <summary>An HTTP endpoint on loopback that keeps every body POSTed to it (a webhook receiver).</summary>
internal sealed class WebhookSink : IDisposable
{
    private readonly HttpListener _listener = new();

    public WebhookSink()
    {
        Url = $"http://127.0.0.1:{RunningServer.FreePort()}/hook/";
        _listener.Prefixes.Add(Url);
        _listener.Start();
        _ = Task.Run(async () =>
        {
            while (_listener.IsListening)
            {
                HttpListenerContext context;
                try
                {
                    context = await _listener.GetContextAsync();
                }
                catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
                {
                    return;
                }

                using (var reader = new StreamReader(context.Request.InputStream))
                {
                    Bodies.Add(await reader.ReadToEndAsync());
                }

                context.Response.StatusCode = 204;
                context.Response.Close();
            }
        });
    }

    public string Url { get; }

    public ConcurrentBag<string> Bodies { get; } = [];

    public void Dispose()
    {
        _listener.Stop();
        _listener.Close();
    }
}

/// <summary>
/// A minimal SMTP receiver on loopback (RFC 5321 commands HELO/EHLO, MAIL, RCPT, DATA, QUIT): enough for a real
/// SMTP client to deliver to, keeping each message's recipients and text.
/// </summary>
internal sealed class SmtpSink : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);

    public SmtpSink()
    {
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _ = Task.Run(AcceptAsync);
    }

    public int Port { get; }

    public ConcurrentBag<(string To, string Message)> Messages { get; } = [];

    private async Task AcceptAsync()
    {
        while (true)
        {
            TcpClient client;
            try
            {
                client = await _listener.AcceptTcpClientAsync();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }

            _ = Task.Run(() => ServeAsync(client));
        }
    }

    private async Task ServeAsync(TcpClient client)
    {
        using (client)
        {
            var stream = client.GetStream();
            var reader = new StreamReader(stream, Encoding.ASCII);
            var writer = new StreamWriter(stream, Encoding.ASCII) { NewLine = "\r\n", AutoFlush = true };
            await writer.WriteLineAsync("220 sink ESMTP");
            var to = new List<string>();
            while (await reader.ReadLineAsync() is { } line)
            {
                string verb = line.Split(' ', 2)[0].ToUpperInvariant();
                switch (verb)
                {
                    case "EHLO":
                    case "HELO":
                        await writer.WriteLineAsync("250 sink");
                        break;
                    case "RCPT":
                        to.Add(line[(line.IndexOf(':', StringComparison.Ordinal) + 1)..].Trim(' ', '<', '>'));
                        await writer.WriteLineAsync("250 ok");
                        break;
                    case "DATA":
                        await writer.WriteLineAsync("354 go on");
                        var message = new StringBuilder();
                        while (await reader.ReadLineAsync() is { } data && data != ".")
                        {
                            message.AppendLine(data);
                        }

                        foreach (var address in to)
                        {
                            Messages.Add((address, message.ToString()));
                        }

                        to.Clear();
                        await writer.WriteLineAsync("250 queued");
                        break;
                    case "QUIT":
                        await writer.WriteLineAsync("221 bye");
                        return;
                    default:
                        await writer.WriteLineAsync("250 ok");
                        break;
                }
            }
        }
    }

    public void Dispose() => _listener.Stop();
}
