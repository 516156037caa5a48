using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Haven.Core;
using Haven.Protocol;
using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

/// <summary>
/// A real <c>haven server</c> process on loopback with real TLS, real <c>haven agent</c> and <c>haven admin</c>
/// processes, on SQLite and on PostgreSQL (started by scripts/test.sh).
/// </summary>
public sealed class ServerTests
{
    public static TheoryData<string> Databases => [.. TestDatabases.Kinds];

    /// <summary>A fresh database for one test (see <see cref="TestDatabases.Create"/>).</summary>
    private static string? Database(string kind) => TestDatabases.Create(kind);

    [Theory]
    [MemberData(nameof(Databases))]
    public void Agents_EnrolWithATokenOnce_AndAreKnownByTheirCertificatesUntilRevoked(string kind)
    {
        var database = Database(kind);
        if (database == TestDatabases.Skip)
        {
            return;
        }

        using var cli = new HavenCli();
        using var server = new RunningServer(cli, database);
        var stateA = Path.Combine(cli.Root, "agent-a");
        var stateB = Path.Combine(cli.Root, "agent-b");

        string token = cli.Expect(0, "admin", "token-create", "--tenant", "default", "--client", "laptop-a").Stdout.Trim().Split('\n')[0];
        Assert.StartsWith("hvn1.", token);
        cli.Expect(0, "agent", "enroll", "--state", stateA, "--server", server.Url!, "--token", token);
        var ready = cli.Expect(0, "agent", "ready", "--state", stateA, "--json").Json;
        Assert.Equal("laptop-a", ready["client_name"]!.ToString());

        // The token was for one client, once.
        var reused = cli.Run("agent", "enroll", "--state", stateB, "--server", server.Url!, "--token", token);
        Assert.Equal(ExitCodes.AccessDenied, reused.ExitCode);
        Assert.Contains("already used", reused.Stderr);

        // A well-formed token the server never issued.
        var forged = new EnrollmentToken(RandomNumberGenerator.GetBytes(32), Convert.FromHexString(server.Fingerprint!)).ToString();
        var unknown = cli.Run("agent", "enroll", "--state", stateB, "--server", server.Url!, "--token", forged);
        Assert.Equal(ExitCodes.AccessDenied, unknown.ExitCode);
        Assert.Contains("unknown enrolment token", unknown.Stderr);

        // A token that names another CA: the agent refuses the server before it sends anything.
        var otherCa = new EnrollmentToken(RandomNumberGenerator.GetBytes(32), RandomNumberGenerator.GetBytes(32)).ToString();
        var impostor = cli.Run("agent", "enroll", "--state", stateB, "--server", server.Url!, "--token", otherCa);
        Assert.Equal(ExitCodes.AccessDenied, impostor.ExitCode);
        Assert.Contains("is not the server the CA fingerprint names", impostor.Stderr);
        Assert.False(File.Exists(Path.Combine(stateB, "agent.json")));

        // Several clients per token when the token says so; each names itself.
        string multi = cli.Expect(0, "admin", "token-create", "--tenant", "default", "--uses", "2").Stdout.Trim().Split('\n')[0];
        cli.Expect(0, "agent", "enroll", "--state", stateB, "--server", server.Url!, "--token", multi, "--name", "desktop-b");
        var clients = cli.Expect(0, "admin", "clients", "--tenant", "default", "--json").Json.AsArray();
        Assert.Equal(["desktop-b", "laptop-a"], clients.Select(c => c!["name"]!.ToString()).Order());
        Assert.NotNull(clients.Single(c => c!["name"]!.ToString() == "laptop-a")!["last_seen"]);

        cli.Expect(0, "admin", "revoke", "--tenant", "default", "laptop-a");
        var revoked = cli.Run("agent", "ready", "--state", stateA);
        Assert.Equal(ExitCodes.AccessDenied, revoked.ExitCode);
        Assert.Contains("revoked", revoked.Stderr);
        Assert.DoesNotContain("   at ", revoked.Stderr);
        cli.Expect(0, "agent", "ready", "--state", stateB);

        var failures = cli.Expect(0, "admin", "auth-failures", "--json").Json.AsArray();
        Assert.Contains(failures, f => f!["kind"]!.ToString() == "enrolment" && f["reason"]!.ToString().Contains("already used"));
        var refusedCert = failures.First(f => f!["kind"]!.ToString() == "certificate")!;
        Assert.Equal("127.0.0.1", refusedCert["remote_address"]!.ToString());
        Assert.True((int)refusedCert["remote_port"]! > 0);
        Assert.Equal("/api/v1/agent/ready", refusedCert["path"]!.ToString());
        Assert.StartsWith("haven/", refusedCert["user_agent"]!.ToString());
        Assert.NotNull(refusedCert["certificate_fingerprint"]);
    }

    [Fact]
    public async Task Certificates_ThatAreMissingForeignOrExpired_AreRefused_AndRecordedWithTheirPath()
    {
        using var cli = new HavenCli();
        using var server = new RunningServer(cli, null);

        // No certificate at all.
        using (var http = server.Http())
        {
            var request = new HttpRequestMessage(HttpMethod.Post, "api/v1/agent/ready") { Content = JsonContent.Create(new { reason = "x", hostname = "h" }) };
            request.Headers.Add("X-Forwarded-For", "203.0.113.7, 10.0.0.1");
            using var response = await http.SendAsync(request);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Contains("no client certificate", await response.Content.ReadAsStringAsync());
        }

        // A certificate from a CA of its own making.
        using var foreignKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var foreignRequest = new CertificateRequest("CN=intruder", foreignKey, HashAlgorithmName.SHA256);
        foreignRequest.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.2")], false));
        using var foreign = foreignRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        using var foreignPfx = X509CertificateLoader.LoadPkcs12(foreign.Export(X509ContentType.Pkcs12), null);
        await ExpectRefusedAsync(server, foreignPfx, "not issued by this server's CA");

        // A certificate from the server's own CA, expired (made here with the CA key from the data folder).
        using var caCert = X509Certificate2.CreateFromPem(File.ReadAllText(Path.Combine(server.Data, "ca", "ca.pem")));
        using var caKey = ECDsa.Create();
        caKey.ImportFromPem(File.ReadAllText(Path.Combine(server.Data, "ca", "ca.key")));
        using var clientKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var expiredRequest = new CertificateRequest("CN=old", clientKey, HashAlgorithmName.SHA256);
        expiredRequest.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.2")], false));
        using var expired = expiredRequest.Create(caCert.SubjectName, X509SignatureGenerator.CreateForECDsa(caKey), DateTimeOffset.UtcNow.AddDays(-30), DateTimeOffset.UtcNow.AddDays(-1), [1, 2, 3]);
        using var expiredWithKey = expired.CopyWithPrivateKey(clientKey);
        using var expiredPfx = X509CertificateLoader.LoadPkcs12(expiredWithKey.Export(X509ContentType.Pkcs12), null);
        await ExpectRefusedAsync(server, expiredPfx, "expired");

        var failures = cli.Expect(0, "admin", "auth-failures", "--json").Json.AsArray();
        var none = failures.Single(f => f!["reason"]!.ToString() == "no client certificate")!;
        Assert.Equal("203.0.113.7, 10.0.0.1", none["forwarded_for"]!.ToString());
        Assert.Equal("127.0.0.1", none["remote_address"]!.ToString());
        Assert.Contains(failures, f => f!["certificate_fingerprint"]?.ToString() == Pinning.Fingerprint(foreignPfx) && f["certificate_subject"]!.ToString() == "CN=intruder");
        Assert.Contains(failures, f => f!["certificate_fingerprint"]?.ToString() == Pinning.Fingerprint(expiredPfx) && f["reason"]!.ToString().Contains("expired"));
    }

    private static async Task ExpectRefusedAsync(RunningServer server, X509Certificate2 certificate, string reason)
    {
        using var http = server.Http(certificate);
        using var response = await http.PostAsJsonAsync("api/v1/agent/ready", new { reason = "x", hostname = "h" });
        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        string body = await response.Content.ReadAsStringAsync();
        Assert.True(body.Contains(reason, StringComparison.Ordinal), body);
        Assert.Equal("close", response.Headers.Connection.SingleOrDefault());
    }

    [Fact]
    public async Task EveryAdminEndpoint_GivesNothingToUnauthenticatedOrForeignTenantCallers()
    {
        using var cli = new HavenCli();
        using var server = new RunningServer(cli, null);
        using var provider = server.Http(bearer: server.Token);
        var tenants = await provider.GetFromJsonAsync<List<TenantInfo>>("api/v1/tenants", ProtocolJson.Options);
        string home = tenants!.Single(t => t.Name == "default").Id;
        var other = await (await provider.PostAsJsonAsync("api/v1/tenants", new CreateTenantRequest("other"), ProtocolJson.Options)).Content.ReadFromJsonAsync<TenantInfo>(ProtocolJson.Options);
        var created = await provider.PostAsJsonAsync("api/v1/admins", new CreateAdminRequest("other-admin", "a long enough password", "admin", other!.Id), ProtocolJson.Options);
        Assert.Equal(HttpStatusCode.Created, created.StatusCode);
        using var anonymous = server.Http();
        var login = await anonymous.PostAsJsonAsync("api/v1/auth/token", new LoginRequest("other-admin", "a long enough password"), ProtocolJson.Options);
        var otherToken = (await login.Content.ReadFromJsonAsync<LoginResponse>(ProtocolJson.Options))!.Token;
        using var foreign = server.Http(bearer: otherToken);
        var enrol = await provider.PostAsJsonAsync($"api/v1/tenants/{home}/enrollment-tokens", new CreateEnrollmentTokenRequest("victim"), ProtocolJson.Options);
        Assert.Equal(HttpStatusCode.Created, enrol.StatusCode);

        // Every admin endpoint, aimed at the home tenant.
        var endpoints = new (HttpMethod Method, string Path, object? Body)[]
        {
            (HttpMethod.Get, "api/v1/me", null),
            (HttpMethod.Get, "api/v1/tenants", null),
            (HttpMethod.Post, "api/v1/tenants", new CreateTenantRequest("sneaky")),
            (HttpMethod.Get, $"api/v1/tenants/{home}/clients", null),
            (HttpMethod.Post, $"api/v1/tenants/{home}/clients/x/revoke", new { }),
            (HttpMethod.Post, $"api/v1/tenants/{home}/enrollment-tokens", new CreateEnrollmentTokenRequest()),
            (HttpMethod.Get, $"api/v1/tenants/{home}/admins", null),
            (HttpMethod.Post, "api/v1/admins", new CreateAdminRequest("sneaky", "a long enough password", "admin", home)),
            (HttpMethod.Get, "api/v1/auth-failures", null),
            (HttpMethod.Get, "api/v1/audit", null),
            (HttpMethod.Get, $"api/v1/tenants/{home}/repository", null),
            (HttpMethod.Get, $"api/v1/tenants/{home}/repository/files/data", null),
            (HttpMethod.Get, $"api/v1/tenants/{home}/repository/files/config/config", null),
            (HttpMethod.Head, $"api/v1/tenants/{home}/repository/files/keys/{new string('a', 64)}", null),
            (HttpMethod.Put, $"api/v1/tenants/{home}/repository/files/data/{new string('b', 64)}", new { }),
            (HttpMethod.Delete, $"api/v1/tenants/{home}/repository/files/data/{new string('b', 64)}", null),
            (HttpMethod.Post, $"api/v1/tenants/{home}/repository/catalog/known", new CatalogQuery([new string('c', 64)])),
            (HttpMethod.Post, $"api/v1/tenants/{home}/repository/catalog/register", new CatalogRegistration([])),
            (HttpMethod.Put, $"api/v1/tenants/{home}/quota", new SetQuotaRequest(1)),
            (HttpMethod.Put, $"api/v1/tenants/{home}/repository/server-key", new ServerKeyRequest(new string('a', 64), "secret")),
            (HttpMethod.Delete, $"api/v1/tenants/{home}/repository/server-key", null),
            (HttpMethod.Post, $"api/v1/tenants/{home}/maintenance", new { }),
            (HttpMethod.Get, "api/v1/server/metrics", null),
            (HttpMethod.Delete, "api/v1/server/metrics", null),
            (HttpMethod.Get, $"api/v1/tenants/{home}/groups", null),
            (HttpMethod.Post, $"api/v1/tenants/{home}/groups", new CreateGroupRequest("sneaky")),
            (HttpMethod.Post, $"api/v1/tenants/{home}/groups/g/clients/victim", new { }),
            (HttpMethod.Get, $"api/v1/tenants/{home}/plans", null),
            (HttpMethod.Post, $"api/v1/tenants/{home}/plans", new PlanSpec("sneaky", ["/"], Client: "victim")),
            (HttpMethod.Delete, $"api/v1/tenants/{home}/plans/p", null),
            (HttpMethod.Post, $"api/v1/tenants/{home}/clients/victim/run", new RunNowRequest()),
            (HttpMethod.Get, $"api/v1/tenants/{home}/jobs", null),
            (HttpMethod.Get, $"api/v1/tenants/{home}/jobs/j", null),
            (HttpMethod.Post, $"api/v1/tenants/{home}/restores", new RestoreRequest("latest", "victim", "/tmp/x")),
            (HttpMethod.Get, $"api/v1/tenants/{home}/notifications", null),
            (HttpMethod.Post, $"api/v1/tenants/{home}/notifications", new CreateNotificationTarget("webhook", "http://127.0.0.1:9/")),
            (HttpMethod.Delete, $"api/v1/tenants/{home}/notifications/n", null),
        };

        // The list is complete: every operation the OpenAPI document gives to administrators is in it.
        using (var anonymousDoc = server.Http())
        {
            var document = await anonymousDoc.GetFromJsonAsync<System.Text.Json.Nodes.JsonObject>("api/v1/openapi.json");
            foreach (var (template, operations) in document!["paths"]!.AsObject())
            {
                var pattern = new System.Text.RegularExpressions.Regex("^" + System.Text.RegularExpressions.Regex.Replace(template.TrimStart('/'), @"\{[^}]+\}", "[^/]+") + "$");
                foreach (var (verb, operation) in operations!.AsObject())
                {
                    if (operation!["tags"]!.AsArray().Single()!.ToString() == "admin")
                    {
                        Assert.True(endpoints.Any(e => e.Method.Method == verb.ToUpperInvariant() && pattern.IsMatch(e.Path)), $"{verb.ToUpperInvariant()} {template} is not walked");
                    }
                }
            }
        }

        foreach (var (method, path, body) in endpoints)
        {
            using var unauthenticated = server.Http();
            using var noAuth = await SendAsync(unauthenticated, method, path, body);
            // 429 once this address has failed too often: refused all the same.
            Assert.True(noAuth.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.TooManyRequests, $"{method} {path} without a token: {noAuth.StatusCode}");

            using var wrongToken = server.Http(bearer: "hva1.not-a-token");
            using var bad = await SendAsync(wrongToken, method, path, body);
            Assert.True(bad.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.TooManyRequests, $"{method} {path} with a wrong token: {bad.StatusCode}");

            using var asForeign = await SendAsync(foreign, method, path, body);
            string text = await asForeign.Content.ReadAsStringAsync();
            if (asForeign.StatusCode == HttpStatusCode.OK)
            {
                Assert.DoesNotContain(home, text); // a refusal may repeat the id the caller sent; data never does
            }

            Assert.DoesNotContain("victim", text);
            Assert.DoesNotContain("\"default\"", text);
            if (path is "api/v1/me" or "api/v1/tenants" or "api/v1/audit" && method == HttpMethod.Get)
            {
                Assert.Equal(HttpStatusCode.OK, asForeign.StatusCode); // own data only, checked above
            }
            else
            {
                Assert.True(asForeign.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.Forbidden, $"{method} {path} as another tenant: {asForeign.StatusCode} {text}");
            }
        }

        // Twenty failures from this address in a minute: the next is refused unchecked, and recorded once as such,
        // while valid callers from the same address go on.
        using (var late = server.Http())
        using (var limited = await late.GetAsync("api/v1/tenants"))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, limited.StatusCode);
        }

        Assert.Equal(HttpStatusCode.OK, (await foreign.GetAsync("api/v1/me")).StatusCode);
        var failures = cli.Expect(0, "admin", "auth-failures", "--json", "--limit", "1000").Json.AsArray();
        Assert.Equal(20, failures.Count(f => f!["kind"]!.ToString() == "token"));
        Assert.Single(failures, f => f!["kind"]!.ToString() == "rate-limit");
    }

    [Fact]
    public async Task EveryAgentEndpoint_InTheOpenApiDocument_RefusesCallersWithoutAClientCertificate()
    {
        using var cli = new HavenCli();
        using var server = new RunningServer(cli, null);
        using var anonymous = server.Http();
        var document = await anonymous.GetFromJsonAsync<System.Text.Json.Nodes.JsonObject>("api/v1/openapi.json");
        int walked = 0;
        foreach (var (template, operations) in document!["paths"]!.AsObject())
        {
            string path = System.Text.RegularExpressions.Regex.Replace(template.TrimStart('/'), @"\{[^}]+\}", m => m.Value == "{folder}" ? "data" : new string('a', 64));
            foreach (var (verb, operation) in operations!.AsObject())
            {
                if (operation!["tags"]!.AsArray().Single()!.ToString() != "agent")
                {
                    continue;
                }

                // Without any credentials, and with an administrator's token (which is not a client certificate).
                foreach (var http in new[] { server.Http(), server.Http(bearer: server.Token) })
                {
                    using (http)
                    using (var refused = await SendAsync(http, new HttpMethod(verb.ToUpperInvariant()), path, verb is "post" or "put" ? new { } : null))
                    {
                        Assert.True(refused.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.TooManyRequests, $"{verb} {path}: {refused.StatusCode}");
                    }
                }

                walked++;
            }
        }

        Assert.True(walked >= 13, $"only {walked} agent operations in the document");
        var failures = cli.Expect(0, "admin", "auth-failures", "--json", "--limit", "1000").Json.AsArray();
        Assert.Contains(failures, f => f!["reason"]!.ToString() == "no client certificate" && f["path"]!.ToString() == "/api/v1/agent/ready");
    }

    private static Task<HttpResponseMessage> SendAsync(HttpClient http, HttpMethod method, string path, object? body)
    {
        var request = new HttpRequestMessage(method, path);
        if (body is not null)
        {
            request.Content = JsonContent.Create(body, body.GetType(), options: ProtocolJson.Options);
        }

        return http.SendAsync(request);
    }

    [Fact]
    public void Server_RefusesADatabaseFromANewerServer_AndStartsAgainOnItsOwn()
    {
        using var cli = new HavenCli();
        string data = Path.Combine(cli.Root, "server");
        using (new RunningServer(cli, null))
        {
        }

        // The second start finds the schema in place and creates no second administrator.
        using (var again = new RunningServer(cli, null, firstStart: false))
        {
            Assert.Contains("listening on", again.Output);
        }

        using (var db = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Path.Combine(data, "haven.db")}"))
        {
            db.Open();
            using var count = db.CreateCommand();
            count.CommandText = "SELECT (SELECT COUNT(*) FROM admins) * 1000 + (SELECT COUNT(*) FROM schema_migrations)";
            Assert.Equal(1000L + Haven.Server.Database.Migrations.Latest, (long)count.ExecuteScalar()!);
            using var cmd = db.CreateCommand();
            cmd.CommandText = "INSERT INTO schema_migrations (version, name, applied) VALUES (999, 'future', '2030-01-01T00:00:00Z')";
            cmd.ExecuteNonQuery();
        }

        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();

        var refused = cli.Run("server", "--data", data, "--listen", "127.0.0.1:0");
        Assert.Equal(ExitCodes.UnsupportedFormat, refused.ExitCode);
        Assert.Contains("schema version 999", refused.Stderr);
        Assert.DoesNotContain("   at ", refused.Stderr);
    }
}
