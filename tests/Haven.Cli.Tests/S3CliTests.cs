using System.Net;
using System.Net.Sockets;
using Haven.Core;
using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

/// <summary>
/// The haven command against a real S3 service (Ceph RGW, started by scripts/test.sh), including a network cut
/// made by closing a TCP relay that sits between haven and the gateway.
/// </summary>
public class S3CliTests
{
    private static (string Host, int Port, string AccessKey, string SecretKey)? S3()
    {
        var endpoint = Environment.GetEnvironmentVariable("HAVEN_TEST_S3_ENDPOINT");
        var access = Environment.GetEnvironmentVariable("HAVEN_TEST_S3_ACCESS_KEY");
        var secret = Environment.GetEnvironmentVariable("HAVEN_TEST_S3_SECRET_KEY");
        if (endpoint is null || access is null || secret is null)
        {
            if (Environment.GetEnvironmentVariable("CI") == "true" || Environment.GetEnvironmentVariable("HAVEN_REQUIRE_S3") == "1")
            {
                throw new InvalidOperationException("S3 tests are required here but HAVEN_TEST_S3_* is not set: run scripts/test.sh");
            }

            return null;
        }

        var uri = new Uri(endpoint);
        return (uri.Host, uri.Port, access, secret);
    }

    private static HavenCli CliFor(string host, int port, (string Host, int Port, string AccessKey, string SecretKey) s3)
    {
        var cli = new HavenCli();
        cli.Environment["HAVEN_REPOSITORY"] = $"s3:http://{host}:{port}/haven-cli-{Guid.NewGuid():N}"[..64].TrimEnd('-');
        cli.Environment["AWS_ACCESS_KEY_ID"] = s3.AccessKey;
        cli.Environment["AWS_SECRET_ACCESS_KEY"] = s3.SecretKey;
        return cli;
    }


    [Fact]
    public void BackupRestoreAndCheck_WorkOnS3()
    {
        if (S3() is not { } s3)
        {
            return;
        }

        using var cli = CliFor(s3.Host, s3.Port, s3);
        TestTree.CreateHardCases(cli.Source, includeLargeFile: false, seed: 11);
        cli.Expect(0, "init");
        cli.Expect(0, "backup", cli.Source);
        File.WriteAllText(Path.Combine(cli.Source, "files", "one"), "changed on the second run");
        var second = cli.Expect(0, "backup", cli.Source, "--json").Json;
        Assert.Equal(1, (long)second["summary"]!["files_changed"]!);
        cli.Expect(0, "check", "--read-data");
        var target = Path.Combine(cli.Root, "out");
        cli.Expect(0, "restore", "latest", "--target", target, "--verify");
        Assert.Empty(TestTree.Compare(cli.Source, target + cli.Source, new CompareOptions(Ownership: Haven.Core.Posix.Posix.IsRoot)));

        cli.Environment["AWS_SECRET_ACCESS_KEY"] = "wrong";
        var denied = cli.Run("snapshots");
        Assert.True(denied.ExitCode == ExitCodes.AccessDenied, denied.ToString());
    }

    [Fact]
    public async Task NetworkCutDuringBackup_FailsCleanly_AndTheNextRunSendsOnlyWhatWasMissing()
    {
        if (S3() is not { } s3)
        {
            return;
        }

        using var relay = new TcpRelay(s3.Host, s3.Port);
        using var cli = CliFor("127.0.0.1", relay.Port, s3);
        TestData.WriteRandomFiles(cli.Source, 200, 1 << 20, seed: 12);
        cli.Expect(0, "init");

        var run = cli.RunAsync("backup", cli.Source);
        while (relay.BytesForwarded < 40L << 20 && !run.IsCompleted)
        {
            await Task.Delay(10);
        }

        Assert.False(run.IsCompleted, "the backup finished before the network was cut");
        relay.Cut();
        var cut = await run;
        Assert.True(cut.ExitCode == ExitCodes.Unavailable, cut.ToString());
        Assert.Contains("unavailable", cut.Stderr);
        Assert.DoesNotContain("   at ", cut.Stderr);
        long before = relay.BytesForwarded;
        long arrived = await PackBytesAsync(cli, s3);
        // Puts are atomic, so every listed pack is whole; a pack closes just below the 16 MiB target, so count, not size.
        Assert.True(arrived > 0, "no whole pack had arrived when the network was cut");

        relay.Restore();
        var resumed = cli.Expect(0, "backup", cli.Source, "--json").Json;
        Assert.True((long)resumed["recovered_packs"]! >= 1, resumed.ToJsonString());
        long sentAgain = relay.BytesForwarded - before;
        long total = await PackBytesAsync(cli, s3);
        Assert.True(sentAgain <= total - arrived + (20L << 20), $"the second run sent {sentAgain} bytes although {arrived} of {total} bytes of packs had arrived");
        cli.Expect(0, "check", "--read-data");
    }

    /// <summary>The bytes of the packs in the repository, listed straight from the gateway (not through the relay).</summary>
    private static async Task<long> PackBytesAsync(HavenCli cli, (string Host, int Port, string AccessKey, string SecretKey) s3)
    {
        var url = cli.Environment["HAVEN_REPOSITORY"]!;
        var direct = new Uri(url["s3:".Length..]);
        var options = Haven.Storage.S3.S3StoreOptions.Parse(
            $"s3:http://{s3.Host}:{s3.Port}{direct.AbsolutePath}",
            new Dictionary<string, string?> { ["AWS_ACCESS_KEY_ID"] = s3.AccessKey, ["AWS_SECRET_ACCESS_KEY"] = s3.SecretKey });
        await using var store = new Haven.Storage.S3.S3Store(options);
        long bytes = 0;
        await foreach (var file in store.ListAsync(Haven.Storage.FileKind.Pack, CancellationToken.None))
        {
            bytes += file.Size;
        }

        return bytes;
    }

    /// <summary>A TCP relay on loopback that can drop every connection and refuse new ones ("the cable is out").</summary>
    private sealed class TcpRelay : IDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly string _host;
        private readonly int _port;
        private readonly List<TcpClient> _open = [];
        private volatile bool _cut;
        private long _forwarded;

        public TcpRelay(string host, int port)
        {
            _host = host;
            _port = port;
            _listener.Start();
            _ = AcceptLoopAsync();
        }

        public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

        public long BytesForwarded => Interlocked.Read(ref _forwarded);

        public void Cut()
        {
            _cut = true;
            lock (_open)
            {
                foreach (var c in _open)
                {
                    try
                    {
                        c.Client?.LingerState = new LingerOption(true, 0); // reset, like a dropped route
                    }
                    catch (ObjectDisposedException)
                    {
                    }

                    c.Dispose();
                }

                _open.Clear();
            }
        }

        public void Restore() => _cut = false;

        private async Task AcceptLoopAsync()
        {
            while (true)
            {
                TcpClient inbound;
                try
                {
                    inbound = await _listener.AcceptTcpClientAsync();
                }
                catch (Exception)
                {
                    return;
                }

                if (_cut)
                {
                    inbound.Client.LingerState = new LingerOption(true, 0);
                    inbound.Dispose();
                    continue;
                }

                _ = RelayAsync(inbound);
            }
        }

        private async Task RelayAsync(TcpClient inbound)
        {
            var outbound = new TcpClient();
            try
            {
                await outbound.ConnectAsync(_host, _port);
                lock (_open)
                {
                    _open.Add(inbound);
                    _open.Add(outbound);
                }

                await Task.WhenAny(PumpAsync(inbound.GetStream(), outbound.GetStream(), count: true), PumpAsync(outbound.GetStream(), inbound.GetStream(), count: false));
            }
            catch (Exception)
            {
            }
            finally
            {
                lock (_open)
                {
                    _open.Remove(inbound);
                    _open.Remove(outbound);
                }

                inbound.Dispose();
                outbound.Dispose();
            }
        }

        private async Task PumpAsync(NetworkStream from, NetworkStream to, bool count)
        {
            var buffer = new byte[81920];
            int n;
            while ((n = await from.ReadAsync(buffer)) > 0)
            {
                await to.WriteAsync(buffer.AsMemory(0, n));
                if (count)
                {
                    Interlocked.Add(ref _forwarded, n);
                }
            }
        }

        public void Dispose()
        {
            Cut();
            _listener.Stop();
        }
    }
}
