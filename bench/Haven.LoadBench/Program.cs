using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Haven.Agent;
using Haven.Protocol;
using Haven.Repository.Crypto;

// The server under load: one `haven server` process on this machine, N agents (AgentRunner, the code of
// `haven agent run`, each with its own state, certificate and TLS connections) in this process, one small folder each.
// Every agent's plan is run again as soon as its previous job ended, with one file changed, for the measured window.
// Reported: jobs finished per minute, the server's answer times (its own metrics, long polls apart), its memory.
var options = LoadOptions.Parse(args);
string root = Path.Combine(Path.GetTempPath(), "haven-load-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)));
Directory.CreateDirectory(root);
Console.WriteLine($"load: {options.Agents} agents, {options.Files} files each, {options.Minutes} min measured; work folder {root}");
using var stop = new CancellationTokenSource();
Process? server = null;
var agents = new List<Task>();
try
{
    int port = FreePort();
    server = StartServer(options, root, port);
    string adminToken = await ReadAdminTokenAsync(server);
    var info = JsonSerializer.Deserialize<ServerInfo>(await File.ReadAllTextAsync(Path.Combine(root, "server", "server.json")), ProtocolJson.Options)!;
    var url = new Uri(info.Url);
    using var admin = await ApiClient.ConnectAsync(url, Pinning.ParseFingerprint(info.CaFingerprint), bearerToken: adminToken);
    string tenant = (await admin.GetAsync<List<TenantInfo>>("api/v1/tenants", default)).Single(t => t.Name == "default").Id;

    // The tenant's repository, and one enrolment token for every agent carrying a key to it.
    string tokenText;
    await using (var store = new HttpStore($"haven:{url}{tenant}", _ => Task.FromResult((admin, HttpStore.TenantBasePath(tenant))), ownsClient: false))
    {
        await using var repo = await Haven.Repository.Repository.InitAsync(store, "load-benchmark-password", new Haven.Repository.RepositoryInitOptions(), null, default);
        byte[] secret = RandomNumberGenerator.GetBytes(32);
        string keyId = (await repo.AddKeyAsync(Base64Url.Encode(secret), KdfParameters.ForRandomSecret(), default)).ToString();
        var token = await admin.PostAsync<EnrollmentTokenInfo>($"api/v1/tenants/{tenant}/enrollment-tokens", new CreateEnrollmentTokenRequest(Uses: options.Agents, RepositoryKeyId: keyId), default);
        tokenText = (EnrollmentToken.Parse(token.Token) with { KeySecret = secret }).ToString();
    }

    // Each agent's folder: most files shared by all (so the catalog finds them), a few of its own.
    var clock = Stopwatch.StartNew();
    var states = new AgentState[options.Agents];
    int shared = options.Files * 4 / 5;
    await Parallel.ForAsync(0, options.Agents, new ParallelOptions { MaxDegreeOfParallelism = 4 }, async (i, ct) =>
    {
        string data = Path.Combine(root, "data", $"agent-{i:000}");
        Directory.CreateDirectory(data);
        for (int f = 0; f < options.Files; f++)
        {
            int seed = f < shared ? f : 1_000_000 + (i * options.Files) + f;
            await File.WriteAllBytesAsync(Path.Combine(data, $"file-{f:000}.bin"), Bytes(4096 + (seed % 16 * 4096), seed), ct);
        }

        states[i] = new AgentState(Path.Combine(root, "agents", $"agent-{i:000}"));
        await AgentClient.EnrollAsync(states[i], url, tokenText, $"load-{i:000}", ct);
        await admin.PostAsync<PlanInfo>($"api/v1/tenants/{tenant}/plans", new PlanSpec($"files-{i:000}", [data], Client: $"load-{i:000}"), ct);
    });
    Console.WriteLine($"enrolled {options.Agents} agents with one plan each in {clock.Elapsed.TotalSeconds:0.0} s");

    foreach (var state in states)
    {
        agents.Add(Task.Run(() => new AgentRunner(state, new AgentRunOptions { Log = _ => { } }).RunAsync(stop.Token)));
    }

    // Warm-up: every agent's first backup (all new data), then the measured window of incremental ones.
    var driver = new Driver(admin, tenant, options.Agents, root);
    clock.Restart();
    await driver.RunRoundsAsync(TimeSpan.FromMinutes(10), untilEachFinishedOnce: true);
    Console.WriteLine($"first backups of all agents: {clock.Elapsed.TotalSeconds:0.0} s");
    await admin.SendAsync<JsonElement?>(HttpMethod.Delete, "api/v1/server/metrics", null, default);
    var window = TimeSpan.FromMinutes(options.Minutes);
    var result = await driver.RunRoundsAsync(window, untilEachFinishedOnce: false);
    var metrics = await admin.GetAsync<ServerMetrics>("api/v1/server/metrics", default);
    var (rss, hwm) = Memory(server.Id);

    double perMinute = result.Finished / window.TotalMinutes;
    Console.WriteLine();
    Console.WriteLine($"agents {options.Agents}, window {window.TotalMinutes:0.#} min: {result.Finished} jobs finished ({result.Succeeded} succeeded, {result.Failed} not), {perMinute:0} jobs/min");
    Console.WriteLine($"job duration (queued to finished): p50 {result.P50:0.0} s, p99 {result.P99:0.0} s");
    Console.WriteLine($"server answers (all routes but long polls): {metrics.All.Count} in the window, p50 {metrics.All.P50Ms:0.0} ms, p95 {metrics.All.P95Ms:0.0} ms, p99 {metrics.All.P99Ms:0.0} ms, max {metrics.All.MaxMs:0} ms, {metrics.All.Errors} 5xx");
    foreach (var r in metrics.Routes.Where(r => r.Count >= 100).OrderByDescending(r => r.Count))
    {
        Console.WriteLine($"  {r.Method,-6} {r.Route,-56} {r.Count,7}  p50 {r.P50Ms,7:0.0}  p99 {r.P99Ms,7:0.0}  max {r.MaxMs,6:0} ms");
    }

    Console.WriteLine($"server memory: RSS {rss / 1048576.0:0} MiB at the end, peak {hwm / 1048576.0:0} MiB; managed heap {metrics.GcHeapBytes / 1048576.0:0} MiB; {metrics.Threads} threads");
    await File.WriteAllTextAsync(Path.Combine(root, "result.json"), JsonSerializer.Serialize(new { options, result, perMinute, metrics, rss, hwm }, ProtocolJson.Options));
    Console.WriteLine($"details: {Path.Combine(root, "result.json")}");
    return result.Failed == 0 ? 0 : 1;
}
finally
{
    stop.Cancel();
    await Task.WhenAll(agents.Select(a => a.ContinueWith(_ => { }, TaskScheduler.Default)));
    if (server is { HasExited: false })
    {
        server.Kill(entireProcessTree: true);
        await server.WaitForExitAsync();
    }

    if (!options.Keep)
    {
        try
        {
            Directory.Delete(root, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

static Process StartServer(LoadOptions options, string root, int port)
{
    var start = new ProcessStartInfo(options.Haven) { RedirectStandardOutput = true, RedirectStandardError = true };
    foreach (string a in new[] { "server", "--data", Path.Combine(root, "server"), "--listen", $"127.0.0.1:{port}" })
    {
        start.ArgumentList.Add(a);
    }

    if (options.Database is { } database)
    {
        start.ArgumentList.Add("--database");
        start.ArgumentList.Add(database);
    }

    var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {options.Haven}");
    process.ErrorDataReceived += (_, e) =>
    {
        if (e.Data is { } line && !line.Contains(" info: ", StringComparison.Ordinal))
        {
            Console.Error.WriteLine("server: " + line);
        }
    };
    process.BeginErrorReadLine();
    return process;
}

static async Task<string> ReadAdminTokenAsync(Process server)
{
    using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
    while (await server.StandardOutput.ReadLineAsync(timeout.Token) is { } line)
    {
        if (line.Trim().StartsWith("API token:", StringComparison.Ordinal))
        {
            _ = server.StandardOutput.ReadToEndAsync(); // keep the pipe drained
            return line.Split(':', 2)[1].Trim();
        }
    }

    throw new InvalidOperationException("the server exited before it printed the first administrator's token");
}

static int FreePort()
{
    using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
    listener.Start();
    return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
}

static byte[] Bytes(int count, int seed)
{
    var bytes = new byte[count];
    new Random(seed).NextBytes(bytes);
    return bytes;
}

static (long Rss, long Hwm) Memory(int pid)
{
    long Read(string key) => File.ReadLines($"/proc/{pid}/status").Where(l => l.StartsWith(key, StringComparison.Ordinal))
        .Select(l => long.Parse(l[key.Length..].Trim().TrimEnd('B', 'k').Trim(), CultureInfo.InvariantCulture) * 1024).FirstOrDefault();
    return (Read("VmRSS:"), Read("VmHWM:"));
}

/// <summary>Runs every agent's plan again as soon as its last job ended, changing one of its files first.</summary>
internal sealed class Driver(ApiClient admin, string tenant, int agents, string root)
{
    private readonly Dictionary<string, string> _clientNames = [];
    private int _round;

    public async Task<WindowResult> RunRoundsAsync(TimeSpan length, bool untilEachFinishedOnce)
    {
        var start = DateTimeOffset.UtcNow;
        var end = start + length;
        var finished = new Dictionary<string, JobInfo>();
        var started = new HashSet<string>();
        while (DateTimeOffset.UtcNow < end)
        {
            var jobs = await admin.GetAsync<List<JobInfo>>($"api/v1/tenants/{tenant}/jobs?limit=2000", default);
            foreach (var job in jobs.Where(j => Haven.Protocol.JobStates.IsFinal(j.State) && j.Finished >= start && j.Finished <= end))
            {
                finished.TryAdd(job.Id, job);
            }

            var latest = jobs.GroupBy(j => j.ClientId).ToDictionary(g => g.Key, g => g.First());
            if (untilEachFinishedOnce && started.Count == agents && started.All(c => latest.TryGetValue(c, out var j) && Haven.Protocol.JobStates.IsFinal(j.State)))
            {
                break;
            }

            if (_clientNames.Count < agents)
            {
                foreach (var client in await admin.GetAsync<List<ClientInfo>>($"api/v1/tenants/{tenant}/clients", default))
                {
                    _clientNames[client.Id] = client.Name;
                }
            }

            foreach (var (id, name) in _clientNames)
            {
                if (untilEachFinishedOnce ? !started.Contains(id) : !latest.TryGetValue(id, out var last) || Haven.Protocol.JobStates.IsFinal(last.State))
                {
                    // One file of the agent's own changes, so each backup has something new to send.
                    string data = Path.Combine(root, "data", "agent-" + name["load-".Length..]);
                    string file = Directory.GetFiles(data).OrderBy(f => f, StringComparer.Ordinal).Last();
                    await File.AppendAllTextAsync(file, $"round {_round}\n");
                    await admin.PostAsync<List<JobInfo>>($"api/v1/tenants/{tenant}/clients/{name}/run", new RunNowRequest(), default);
                    started.Add(id);
                }
            }

            _round++;
            await Task.Delay(TimeSpan.FromSeconds(1));
        }

        var durations = finished.Values.Where(j => j.Finished is not null).Select(j => (j.Finished!.Value - j.Queued).TotalSeconds).Order().ToList();
        double Percentile(double q) => durations.Count == 0 ? 0 : durations[Math.Min(durations.Count - 1, (int)Math.Ceiling(q * durations.Count) - 1)];
        return new WindowResult(finished.Count, finished.Values.Count(j => j.State == Haven.Protocol.JobStates.Succeeded), finished.Values.Count(j => j.State != Haven.Protocol.JobStates.Succeeded), Percentile(0.5), Percentile(0.99));
    }
}

internal sealed record WindowResult(int Finished, int Succeeded, int Failed, double P50, double P99);

internal sealed record ServerInfo(string Url, string CaFingerprint, int Pid);

internal sealed record LoadOptions(int Agents, double Minutes, int Files, string Haven, string? Database, bool Keep)
{
    public static LoadOptions Parse(string[] args)
    {
        var o = new LoadOptions(200, 3, 40, DefaultHaven(), null, false);
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            o = args[i] switch
            {
                "--agents" => o with { Agents = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--minutes" => o with { Minutes = double.Parse(Next(), CultureInfo.InvariantCulture) },
                "--files" => o with { Files = int.Parse(Next(), CultureInfo.InvariantCulture) },
                "--haven" => o with { Haven = Next() },
                "--database" => o with { Database = Next() },
                "--keep" => o with { Keep = true },
                _ => throw new ArgumentException($"unknown argument {args[i]} (--agents N --minutes M --files F --haven PATH --database CONN --keep)"),
            };
        }

        return o;
    }

    private static string DefaultHaven()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Haven.slnx")))
            {
                return Path.Combine(dir.FullName, "src", "Haven.Cli", "bin", "Release", "net10.0", "haven");
            }
        }

        return "haven";
    }
}
