using System.Security.Cryptography;
using Haven.Agent;
using Haven.Core;
using Haven.Protocol;
using Haven.Storage;
using Haven.Testing;
using Xunit;

namespace Haven.Server.Tests;

/// <summary>
/// What the server enforces on hosted repositories: agents append and never delete, quotas, the per-tenant blob
/// catalog, and tenants that never see each other. On SQLite and on PostgreSQL.
/// </summary>
public sealed class HostedRepositoryTests
{
    public static TheoryData<string> Databases => [.. TestDatabases.Kinds];

    private static readonly CancellationToken None = CancellationToken.None;

    /// <summary>A file named by the SHA-256 of its bytes, as every file a client writes is.</summary>
    private static (StoreHandle Handle, byte[] Bytes) Named(FileKind kind, int size)
    {
        var bytes = RandomNumberGenerator.GetBytes(size);
        return (new StoreHandle(kind, Convert.ToHexStringLower(SHA256.HashData(bytes))), bytes);
    }

    private static async Task<TestServer?> StartAsync(string kind)
    {
        var database = TestDatabases.Create(kind);
        return database == TestDatabases.Skip ? null : await TestServer.StartAsync(database);
    }

    [Theory]
    [MemberData(nameof(Databases))]
    public async Task Agents_AddFiles_ButRemoveNothingExceptLocks_AndWriteNoConfigOrKeys(string kind)
    {
        await using var server = await StartAsync(kind);
        if (server is null) return;
        var tenant = await server.CreateTenantAsync();
        var state = await server.EnrolAsync(tenant.Id);
        await using var admin = server.AdminStore(tenant.Id);
        await using var agent = AgentClient.OpenRepositoryStore(state);
        await admin.PutAsync(StoreHandle.Config, "{}"u8.ToArray(), None);

        var (pack, packBytes) = Named(FileKind.Pack, 5000);
        await agent.PutAsync(pack, packBytes, None);
        Assert.Equal(packBytes, await admin.GetAsync(pack, None));

        var refused = await Assert.ThrowsAsync<StoreException>(() => agent.DeleteAsync(pack, None));
        Assert.Equal(StoreErrorKind.AccessDenied, refused.Kind);
        Assert.Contains("append-only", refused.Message);
        Assert.NotNull(await agent.StatAsync(pack, None));

        var (snapshot, snapshotBytes) = Named(FileKind.Snapshot, 300);
        await agent.PutAsync(snapshot, snapshotBytes, None);
        Assert.Equal(StoreErrorKind.AccessDenied, (await Assert.ThrowsAsync<StoreException>(() => agent.DeleteAsync(snapshot, None))).Kind);

        var (key, keyBytes) = Named(FileKind.Key, 200);
        Assert.Equal(StoreErrorKind.AccessDenied, (await Assert.ThrowsAsync<StoreException>(() => agent.PutAsync(key, keyBytes, None))).Kind);
        Assert.Equal(StoreErrorKind.AccessDenied, (await Assert.ThrowsAsync<StoreException>(() => agent.PutAsync(StoreHandle.Config, "{\"x\":1}"u8.ToArray(), None))).Kind);
        Assert.Null(await admin.StatAsync(key, None));
        Assert.Equal("{}"u8.ToArray(), await admin.GetAsync(StoreHandle.Config, None));

        var (lockFile, lockBytes) = Named(FileKind.Lock, 100);
        await agent.PutAsync(lockFile, lockBytes, None);
        await agent.DeleteAsync(lockFile, None);
        Assert.Null(await admin.StatAsync(lockFile, None));

        // A client's file must be named by its hash: a mismatch is refused and nothing is stored.
        var (other, _) = Named(FileKind.Index, 64);
        var mismatch = await Assert.ThrowsAsync<StoreException>(() => agent.PutAsync(other, RandomNumberGenerator.GetBytes(64), None));
        Assert.Equal(StoreErrorKind.Permanent, mismatch.Kind);
        Assert.Null(await admin.StatAsync(other, None));

        // Administrators run maintenance and may delete.
        await admin.DeleteAsync(pack, None);
        Assert.Null(await agent.StatAsync(pack, None));
    }

    [Theory]
    [MemberData(nameof(Databases))]
    public async Task AQuotaRefusesWhatWouldPassIt_WithAClearError_AndDeletesGiveSpaceBack(string kind)
    {
        await using var server = await StartAsync(kind);
        if (server is null) return;
        var tenant = await server.CreateTenantAsync();
        var state = await server.EnrolAsync(tenant.Id);
        await using var agent = AgentClient.OpenRepositoryStore(state);
        await using var admin = server.AdminStore(tenant.Id);
        using (var api = server.AdminApi())
        {
            var set = await api.SendAsync<RepositoryInfo>(HttpMethod.Put, $"api/v1/tenants/{tenant.Id}/quota", new SetQuotaRequest(10_000), None);
            Assert.Equal(10_000, set.QuotaBytes);
        }

        var (first, firstBytes) = Named(FileKind.Pack, 6000);
        await agent.PutAsync(first, firstBytes, None);
        await agent.PutAsync(first, firstBytes, None); // already there: costs nothing
        var (second, secondBytes) = Named(FileKind.Pack, 6000);
        var full = await Assert.ThrowsAsync<StoreException>(() => agent.PutAsync(second, secondBytes, None));
        Assert.Equal(StoreErrorKind.NoSpace, full.Kind);
        Assert.Contains("quota", full.Message);
        Assert.Contains("6000 of 10000 bytes", full.Message);
        Assert.Null(await admin.StatAsync(second, None));

        // Locks are not counted, so a full tenant can still lock its repository for maintenance.
        var (lockFile, lockBytes) = Named(FileKind.Lock, 5000);
        await agent.PutAsync(lockFile, lockBytes, None);

        using (var api = server.AdminApi())
        {
            Assert.Equal(6000, (await api.GetAsync<RepositoryInfo>($"api/v1/tenants/{tenant.Id}/repository", None)).UsageBytes);
            await admin.DeleteAsync(first, None);
            Assert.Equal(0, (await api.GetAsync<RepositoryInfo>($"api/v1/tenants/{tenant.Id}/repository", None)).UsageBytes);
        }

        await agent.PutAsync(second, secondBytes, None);
    }

    [Theory]
    [MemberData(nameof(Databases))]
    public async Task TheCatalog_AnswersForEveryClientOfTheTenant_OnlyForHeldPacks_AndForgetsDeletedPacks(string kind)
    {
        await using var server = await StartAsync(kind);
        if (server is null) return;
        var tenant = await server.CreateTenantAsync();
        var otherTenant = await server.CreateTenantAsync();
        await using var a = AgentClient.OpenRepositoryStore(await server.EnrolAsync(tenant.Id));
        await using var b = AgentClient.OpenRepositoryStore(await server.EnrolAsync(tenant.Id));
        await using var stranger = AgentClient.OpenRepositoryStore(await server.EnrolAsync(otherTenant.Id));
        await using var admin = server.AdminStore(tenant.Id);

        var (pack, packBytes) = Named(FileKind.Pack, 1000);
        await a.PutAsync(pack, packBytes, None);
        var blobs = Enumerable.Range(0, 700).Select(_ => new ObjectId(RandomNumberGenerator.GetBytes(32))).ToArray();
        var missingPack = new ObjectId(RandomNumberGenerator.GetBytes(32));
        var orphan = new ObjectId(RandomNumberGenerator.GetBytes(32));
        var never = new ObjectId(RandomNumberGenerator.GetBytes(32));
        await a.Catalog!.RegisterAsync([new CatalogPack(ObjectId.Parse(pack.Name), blobs), new CatalogPack(missingPack, [orphan])], None);

        var asked = blobs.Append(orphan).Append(never).ToList();
        var known = await b.Catalog!.FindKnownAsync(asked, None);
        Assert.Equal(blobs.ToHashSet(), known.ToHashSet());
        Assert.Empty(await stranger.Catalog!.FindKnownAsync(asked, None));

        await admin.DeleteAsync(pack, None);
        Assert.Empty(await b.Catalog.FindKnownAsync(asked, None));
    }

    [Fact]
    public async Task ATenantsRepository_IsNotReachable_FromAnotherTenantsAgentOrAdministrator()
    {
        await using var server = await TestServer.StartAsync();
        var tenant = await server.CreateTenantAsync();
        var otherTenant = await server.CreateTenantAsync();
        await using var owner = AgentClient.OpenRepositoryStore(await server.EnrolAsync(tenant.Id));
        await using var stranger = AgentClient.OpenRepositoryStore(await server.EnrolAsync(otherTenant.Id));
        var (pack, packBytes) = Named(FileKind.Pack, 1000);
        await owner.PutAsync(pack, packBytes, None);

        // An agent only ever reaches its own tenant's repository.
        Assert.Empty(await stranger.ListAsync(FileKind.Pack, None).ToListAsync());
        Assert.Equal(StoreErrorKind.NotFound, (await Assert.ThrowsAsync<StoreException>(() => stranger.GetAsync(pack, None))).Kind);

        // An administrator of the other tenant gets "not found" for the whole repository, as for a tenant that does not exist.
        string token;
        using (var api = server.AdminApi())
        {
            await api.PostAsync<AdminInfo>("api/v1/admins", new CreateAdminRequest("other-admin", "a long password 1", "admin", otherTenant.Id), None);
            token = (await api.PostAsync<LoginResponse>("api/v1/auth/token", new LoginRequest("other-admin", "a long password 1"), None)).Token;
        }

        await using var foreignAdmin = server.AdminStore(tenant.Id, token);
        Assert.Equal(StoreErrorKind.NotFound, (await Assert.ThrowsAsync<StoreException>(() => foreignAdmin.GetAsync(pack, None))).Kind);
        Assert.Equal(StoreErrorKind.NotFound, (await Assert.ThrowsAsync<StoreException>(async () => await foreignAdmin.ListAsync(FileKind.Pack, None).ToListAsync())).Kind);
        Assert.Null(await foreignAdmin.StatAsync(pack, None));
        var (put, putBytes) = Named(FileKind.Pack, 10);
        await Assert.ThrowsAsync<StoreException>(() => foreignAdmin.PutAsync(put, putBytes, None));
        await Assert.ThrowsAsync<StoreException>(() => foreignAdmin.Catalog!.FindKnownAsync([ObjectId.Parse(pack.Name)], None));
        Assert.Null(await owner.StatAsync(put, None));

        // Without a certificate or token nothing is served at all.
        using var anonymous = new HttpClient(new SocketsHttpHandler { SslOptions = { RemoteCertificateValidationCallback = (_, _, _, _) => true } }) { BaseAddress = server.Server.Url };
        foreach (var path in new[] { $"{HttpStore.AgentBasePath}files/data", $"{HttpStore.TenantBasePath(tenant.Id)}files/data/{pack.Name}" })
        {
            using var response = await anonymous.GetAsync(path);
            Assert.Equal(System.Net.HttpStatusCode.Unauthorized, response.StatusCode);
        }
    }

    [Fact]
    public async Task AnAgent_GetsAndReportsOnlyItsOwnJobs()
    {
        await using var server = await TestServer.StartAsync();
        var tenant = await server.CreateTenantAsync();
        var owner = await server.EnrolAsync(tenant.Id, "owner1");
        var other = await server.EnrolAsync(tenant.Id, "other1");
        using (var api = server.AdminApi())
        {
            await api.PostAsync<PlanInfo>($"api/v1/tenants/{tenant.Id}/plans", new PlanSpec("p", ["/data"], Client: "owner1"), None);
        }

        using var otherApi = AgentClient.Connect(other);
        Assert.Empty((await otherApi.PostAsync<PollResponse>("api/v1/agent/poll", new PollRequest(0), None)).Jobs);
        string jobId;
        using (var api = server.AdminApi())
        {
            jobId = (await api.PostAsync<List<JobInfo>>($"api/v1/tenants/{tenant.Id}/clients/owner1/run", new RunNowRequest(), None)).Single().Id;
        }

        Assert.Empty((await otherApi.PostAsync<PollResponse>("api/v1/agent/poll", new PollRequest(0), None)).Jobs);
        var refused = await Assert.ThrowsAsync<HavenException>(() => otherApi.PostAsync<System.Text.Json.JsonElement?>($"api/v1/agent/jobs/{jobId}/report", new JobReport(JobStates.Failed, Message: "forged"), None));
        Assert.Equal(ErrorCode.NotFound, refused.Code);

        using var ownerApi = AgentClient.Connect(owner);
        var assigned = (await ownerApi.PostAsync<PollResponse>("api/v1/agent/poll", new PollRequest(5), None)).Jobs.Single();
        Assert.Equal(jobId, assigned.JobId);
        Assert.Equal(["/data"], assigned.Plan!.Paths);
        await ownerApi.PostAsync<System.Text.Json.JsonElement?>($"api/v1/agent/jobs/{jobId}/report", new JobReport(JobStates.Succeeded, SnapshotId: new string('d', 64)), None);
        using var admin = server.AdminApi();
        var job = await admin.GetAsync<JobInfo>($"api/v1/tenants/{tenant.Id}/jobs/{jobId}", None);
        Assert.Equal(JobStates.Succeeded, job.State);
        Assert.Null(job.Message);
    }

    [Fact]
    public async Task Retention_DeletesASnapshot_OnlyForTheClientThatUploadedIt()
    {
        await using var server = await TestServer.StartAsync();
        var tenant = await server.CreateTenantAsync();
        await using (var admin = server.AdminStore(tenant.Id))
        {
            await admin.PutAsync(StoreHandle.Config, RandomNumberGenerator.GetBytes(100), None); // initialised, as far as forget cares
        }

        var honest = await server.EnrolAsync(tenant.Id, "honest1");
        var forger = await server.EnrolAsync(tenant.Id, "forger1");
        using (var api = server.AdminApi())
        {
            await api.PostAsync<PlanInfo>($"api/v1/tenants/{tenant.Id}/plans", new PlanSpec("p", ["/data"], Client: "forger1", Retention: new RetentionSpec(KeepLast: 1)), None);
        }

        using (var api = server.AdminApi())
        {
            // Before any job ended there is nothing to forget (and an empty answer is still read right).
            Assert.Equal(0, (await api.PostAsync<MaintenanceResult>($"api/v1/tenants/{tenant.Id}/maintenance", new { }, None)).SnapshotsForgotten);
        }

        // The honest client's snapshot; then three snapshots of the forger's own, and one job of the forger that
        // claims the honest client's snapshot.
        var (theirs, theirBytes) = Named(FileKind.Snapshot, 300);
        await using (var store = AgentClient.OpenRepositoryStore(honest))
        {
            await store.PutAsync(theirs, theirBytes, None);
        }

        var own = new List<StoreHandle>();
        await using (var store = AgentClient.OpenRepositoryStore(forger))
        {
            for (int i = 0; i < 2; i++)
            {
                var (handle, bytes) = Named(FileKind.Snapshot, 300);
                await store.PutAsync(handle, bytes, None);
                own.Add(handle);
            }
        }

        using var forgerApi = AgentClient.Connect(forger);
        foreach (string snapshot in new[] { theirs.Name, own[0].Name, own[1].Name })
        {
            using (var api = server.AdminApi())
            {
                await api.PostAsync<List<JobInfo>>($"api/v1/tenants/{tenant.Id}/clients/forger1/run", new RunNowRequest(), None);
            }

            var job = (await forgerApi.PostAsync<PollResponse>("api/v1/agent/poll", new PollRequest(5), None)).Jobs.Single();
            await forgerApi.PostAsync<System.Text.Json.JsonElement?>($"api/v1/agent/jobs/{job.JobId}/report", new JobReport(JobStates.Succeeded, SnapshotId: snapshot), None);
            await Task.Delay(20); // distinct start times
        }

        using var adminApi = server.AdminApi();
        var result = await adminApi.PostAsync<MaintenanceResult>($"api/v1/tenants/{tenant.Id}/maintenance", new { }, None);
        Assert.Equal([own[0].Name], result.Forgotten);
        Assert.Equal(1, result.SnapshotsRefused);
        Assert.False(result.Pruned);
        Assert.Contains("no key", result.PruneSkipped);

        await using var check = server.AdminStore(tenant.Id);
        Assert.NotNull(await check.StatAsync(theirs, None)); // named by the forger's job, uploaded by another client: kept
        Assert.Null(await check.StatAsync(own[0], None));
        Assert.NotNull(await check.StatAsync(own[1], None));
        var jobs = await adminApi.GetAsync<List<JobInfo>>($"api/v1/tenants/{tenant.Id}/jobs", None);
        Assert.NotNull(jobs.Single(j => j.SnapshotId == own[0].Name).Forgotten);
        Assert.Null(jobs.Single(j => j.SnapshotId == theirs.Name).Forgotten);

        // A second run finds nothing more to do.
        var again = await adminApi.PostAsync<MaintenanceResult>($"api/v1/tenants/{tenant.Id}/maintenance", new { }, None);
        Assert.Equal(0, again.SnapshotsForgotten);
    }
}
