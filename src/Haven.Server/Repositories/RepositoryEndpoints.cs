using System.Security.Cryptography;
using System.Text.Json;
using Dapper;
using Haven.Core;
using Haven.Protocol;
using Haven.Server.Api;
using Haven.Server.Database;
using Haven.Server.Security;
using Haven.Storage;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Haven.Server.Repositories;

/// <summary>
/// Hosted repositories over HTTPS (the server side of <see cref="HttpStore"/>), in two scopes:
/// <list type="bullet">
/// <item><c>/api/v1/agent/repository</c>: an enrolled client, in its own tenant's repository. Append-only: it may add
/// data, index and snapshot files and take and drop locks, never delete anything else, and never write config or
/// keys.</item>
/// <item><c>/api/v1/tenants/{tenant}/repository</c>: an administrator of the tenant (viewers read only). Administrators
/// create the repository and its keys and run maintenance, so they may delete.</item>
/// </list>
/// Every file a client writes is named by the SHA-256 of its bytes: a client's upload whose bytes do not match its
/// name is refused. An upload of a name the store holds already is accepted without rewriting it (files are
/// write-once), except the config, which is never replaced (409). Stored bytes count against the tenant's quota
/// (locks excepted): 507 when it is used up.
/// </summary>
internal static class RepositoryEndpoints
{
    /// <summary>The largest file accepted: a pack is about 16 MiB; Kestrel's body limit is 64 MiB.</summary>
    private const long MaxFileSize = 64L * 1024 * 1024;

    /// <summary>The largest ranged read (restores read a blob or a run of blobs at a time).</summary>
    private const int MaxRange = 64 * 1024 * 1024;

    public static void Map(IEndpointRouteBuilder app)
    {
        foreach (var (prefix, tag, whose) in new[] { ("/api/v1/agent/repository", ApiDocs.Agent, "the agent's tenant's"), ("/api/v1/tenants/{tenant}/repository", ApiDocs.Admin, "a tenant's") })
        {
            app.MapGet(prefix, InfoAsync).Returns<RepositoryInfo>(tag, $"Size, quota and usage of {whose} repository");
            app.MapGet(prefix + "/files/{folder}", ListAsync).Returns<List<RepositoryFileInfo>>(tag, $"Files of one folder of {whose} repository (config, keys, data, index, snapshots, locks)");
            app.MapMethods(prefix + "/files/{folder}/{name}", ["GET", "HEAD"], GetAsync)
                .Returns<byte[]>(tag, $"Read a file of {whose} repository, whole or a byte range (Range: bytes=A-B)").Produces(StatusCodes.Status206PartialContent, contentType: "application/octet-stream");
            app.MapPut(prefix + "/files/{folder}/{name}", PutAsync).WithDescription("The request body is the file's bytes (any content type).")
                .Returns<byte[]>(tag, $"Store a file in {whose} repository (write-once; hash-named files are verified; 507 when the quota is used up)", StatusCodes.Status201Created)
                .Produces(StatusCodes.Status200OK).Produces<ApiError>(StatusCodes.Status409Conflict).Produces<ApiError>(StatusCodes.Status507InsufficientStorage);
            app.MapDelete(prefix + "/files/{folder}/{name}", DeleteAsync).ReturnsNothing(tag, tag == ApiDocs.Agent ? "Delete a lock (agents delete nothing else)" : "Delete a file of a tenant's repository");
            app.MapPost(prefix + "/catalog/known", KnownAsync).Returns<CatalogAnswer>(tag, "Which of these blob ids the tenant's repository holds already");
            app.MapPost(prefix + "/catalog/register", RegisterAsync).Returns<CatalogRegistered>(tag, "Register the blobs of stored packs in the tenant's catalog");
        }

        app.MapPut("/api/v1/tenants/{tenant}/repository/server-key", SetServerKeyAsync).ReturnsNothing(ApiDocs.Admin, "Give the server a key to the tenant's repository (a key file and its secret), so its maintenance can prune");
        app.MapDelete("/api/v1/tenants/{tenant}/repository/server-key", RemoveServerKeyAsync).ReturnsNothing(ApiDocs.Admin, "Withdraw the server's key: forget the secret and delete its key file");
        app.MapPost("/api/v1/tenants/{tenant}/maintenance", MaintainAsync).Returns<MaintenanceResult>(ApiDocs.Admin, "Maintain the tenant's repository now: apply the plans' retention, then prune if the server holds a key");
        app.MapPut("/api/v1/tenants/{tenant}/quota", SetQuotaAsync).Returns<RepositoryInfo>(ApiDocs.Admin, "Set a tenant's quota in bytes, 0 for none (provider only)");
    }

    /// <summary>Who is asking, for which tenant: an agent (append-only) or an administrator (who may delete).</summary>
    private sealed record Scope(string TenantId, string Actor, string? ClientId)
    {
        public bool IsAgent => ClientId is not null;
    }

    /// <summary>The caller's scope, or the answer refusing it (another tenant's repository is "not found").</summary>
    private static async Task<(Scope? Scope, IResult? Refusal)> ScopeAsync(HttpContext context, ManagementDb db, bool write)
    {
        if (context.Items[Authentication.AgentKey] is AgentPrincipal agent)
        {
            return (new Scope(agent.TenantId, $"client:{agent.Name}", agent.ClientId), null);
        }

        string tenant = context.Request.RouteValues["tenant"] as string ?? "";
        if (await context.TenantAccessAsync(db, tenant, write, "viewers read the repository; writing takes an administrator").ConfigureAwait(false) is { } refusal)
        {
            return (null, refusal);
        }

        return (new Scope(tenant, $"admin:{context.Admin().Name}", ClientId: null), null);
    }

    private static bool TryHandle(string folder, string name, out StoreHandle handle)
    {
        handle = default;
        if (!HttpStore.TryParseFolder(folder, out var kind))
        {
            return false;
        }

        handle = new StoreHandle(kind, name);
        return kind == FileKind.Config ? name == "config" : StoreLayout.IsValidName(name);
    }

    private static IResult NoSuchFile(string folder, string name) => ApiResults.NotFound($"{folder}/{name}");

    /// <summary>Store failures as answers: missing files 404, a full store 507, the rest 503 (retried by the caller).</summary>
    private static async Task<IResult> GuardAsync(HttpContext context, Func<Task<IResult>> body)
    {
        try
        {
            return await body().ConfigureAwait(false);
        }
        catch (StoreException e) when (e.Kind == StoreErrorKind.NotFound)
        {
            return ApiResults.NotFound("the file");
        }
        catch (StoreException e)
        {
            context.RequestServices.GetService<ILoggerFactory>()?.CreateLogger("Haven.Server.Repositories").LogWarning("repository storage failed on {Method} {Path}: {Message}", context.Request.Method, context.Request.Path, e.Message);
            return e.Kind == StoreErrorKind.NoSpace
                ? ApiResults.Error(StatusCodes.Status507InsufficientStorage, "no_space", "the server's repository storage is full", "the provider must free or add space")
                : ApiResults.Error(StatusCodes.Status503ServiceUnavailable, "storage_unavailable", "the server's repository storage failed; try again", null);
        }
    }

    private static async Task<IResult> InfoAsync(HttpContext context, ManagementDb db, TenantRepositories repositories)
    {
        var (scope, refusal) = await ScopeAsync(context, db, write: false).ConfigureAwait(false);
        if (scope is null)
        {
            return refusal!;
        }

        return await GuardAsync(context, async () =>
        {
            return ApiResults.Ok(await RepositoryInfoAsync(context, scope.TenantId).ConfigureAwait(false));
        }).ConfigureAwait(false);
    }

    private static async Task<IResult> ListAsync(HttpContext context, string folder, ManagementDb db, TenantRepositories repositories)
    {
        var (scope, refusal) = await ScopeAsync(context, db, write: false).ConfigureAwait(false);
        if (scope is null)
        {
            return refusal!;
        }

        if (!HttpStore.TryParseFolder(folder, out var kind))
        {
            return ApiResults.NotFound($"folder {folder}");
        }

        var store = repositories.For(scope.TenantId);
        var ct = context.RequestAborted;
        // The listing streams: a repository of a few TiB has hundreds of thousands of packs.
        context.Response.ContentType = "application/json; charset=utf-8";
        try
        {
            await using var writer = new Utf8JsonWriter(context.Response.Body);
            writer.WriteStartArray();
            int n = 0;
            await foreach (var file in store.ListAsync(kind, ct).ConfigureAwait(false))
            {
                writer.WriteStartObject();
                writer.WriteString("name", file.Handle.Name);
                writer.WriteNumber("size", file.Size);
                writer.WriteEndObject();
                if (++n % 1000 == 0)
                {
                    await writer.FlushAsync(ct).ConfigureAwait(false);
                }
            }

            writer.WriteEndArray();
        }
        catch (StoreException e)
        {
            // Part of the answer may be out: end the connection so the client sees a broken listing, not a short one.
            context.RequestServices.GetService<ILoggerFactory>()?.CreateLogger("Haven.Server.Repositories").LogWarning("listing {Folder} of tenant {Tenant} failed: {Message}", folder, scope.TenantId, e.Message);
            context.Abort();
        }

        return Results.Empty;
    }

    private static async Task<IResult> GetAsync(HttpContext context, string folder, string name, ManagementDb db, TenantRepositories repositories)
    {
        var (scope, refusal) = await ScopeAsync(context, db, write: false).ConfigureAwait(false);
        if (scope is null)
        {
            return refusal!;
        }

        if (!TryHandle(folder, name, out var handle))
        {
            return NoSuchFile(folder, name);
        }

        var store = repositories.For(scope.TenantId);
        var ct = context.RequestAborted;
        return await GuardAsync(context, async () =>
        {
            if (HttpMethods.IsHead(context.Request.Method))
            {
                if (await store.StatAsync(handle, ct).ConfigureAwait(false) is not { } info)
                {
                    return NoSuchFile(folder, name);
                }

                context.Response.ContentLength = info.Size;
                context.Response.ContentType = "application/octet-stream";
                return Results.Empty;
            }

            var range = context.Request.GetTypedHeaders().Range;
            if (range is null)
            {
                var bytes = await store.GetAsync(handle, ct).ConfigureAwait(false);
                return Results.Bytes(bytes, "application/octet-stream");
            }

            if (range.Ranges.Count != 1 || range.Ranges.First() is not { From: { } from, To: { } to } || to < from || to - from + 1 > MaxRange)
            {
                return ApiResults.Error(StatusCodes.Status416RangeNotSatisfiable, "bad_range", $"one range 'bytes=FROM-TO' of at most {MaxRange} bytes is served");
            }

            int length = (int)(to - from + 1);
            var buffer = new byte[length];
            try
            {
                // One read per range (a restore asks for every blob this way); the size is looked up only to
                // explain a range past the end.
                await store.ReadRangeAsync(handle, from, buffer, ct).ConfigureAwait(false);
            }
            catch (StoreException e) when (e.Kind == StoreErrorKind.Permanent)
            {
                if (await store.StatAsync(handle, ct).ConfigureAwait(false) is not { } stat || to < stat.Size)
                {
                    throw;
                }

                context.Response.Headers.ContentRange = $"bytes */{stat.Size}";
                return ApiResults.Error(StatusCodes.Status416RangeNotSatisfiable, "bad_range", $"{folder}/{name} has {stat.Size} bytes; bytes {from}-{to} are past its end");
            }

            context.Response.StatusCode = StatusCodes.Status206PartialContent;
            context.Response.Headers.ContentRange = $"bytes {from}-{to}/*";
            context.Response.ContentType = "application/octet-stream";
            context.Response.ContentLength = length;
            await context.Response.Body.WriteAsync(buffer, ct).ConfigureAwait(false);
            return Results.Empty;
        }).ConfigureAwait(false);
    }

    private static async Task<IResult> PutAsync(HttpContext context, string folder, string name, ManagementDb db, TenantRepositories repositories)
    {
        var (scope, refusal) = await ScopeAsync(context, db, write: true).ConfigureAwait(false);
        if (scope is null)
        {
            return refusal!;
        }

        if (!TryHandle(folder, name, out var handle))
        {
            return NoSuchFile(folder, name);
        }

        if (scope.IsAgent && handle.Kind is FileKind.Config or FileKind.Key)
        {
            return ApiResults.Forbidden($"clients do not write {folder}: an administrator creates the repository and its keys");
        }

        if (context.Request.ContentLength is not { } length)
        {
            return ApiResults.Error(StatusCodes.Status411LengthRequired, "length_required", "send the file with a Content-Length");
        }

        if (length > MaxFileSize)
        {
            return ApiResults.Error(StatusCodes.Status413PayloadTooLarge, "too_large", $"a repository file is at most {MaxFileSize} bytes; this one has {length}");
        }

        var store = repositories.For(scope.TenantId);
        var ct = context.RequestAborted;
        return await GuardAsync(context, async () =>
        {
            if (await store.StatAsync(handle, ct).ConfigureAwait(false) is not null)
            {
                // Write-once: the name is the hash of the bytes, so what is stored is what was sent. The config is the
                // one file not named by its hash, and it is never replaced.
                return handle.Kind == FileKind.Config
                    ? ApiResults.Error(StatusCodes.Status409Conflict, "conflict", "the repository exists already (it has a config)", "use it as it is")
                    : Results.Ok();
            }

            bool charged = handle.Kind != FileKind.Lock;
            if (charged && !await TenantUsage.ChargeAsync(db, scope.TenantId, length, ct).ConfigureAwait(false))
            {
                var usage = await UsageAsync(db, scope.TenantId, ct).ConfigureAwait(false);
                return ApiResults.Error(
                    StatusCodes.Status507InsufficientStorage,
                    "quota_exceeded",
                    $"the tenant's repository quota is used up: {usage?.UsageBytes ?? 0} of {usage?.QuotaBytes ?? 0} bytes are stored, and this file needs {length} more",
                    "ask the provider for a larger quota, or free space with forget and prune");
            }

            string temp = Path.Combine(repositories.TempFolder, $"upload-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}.tmp");
            bool stored = false;
            try
            {
                var (received, hash) = await ReceiveAsync(context.Request.Body, temp, length, ct).ConfigureAwait(false);
                if (received != length)
                {
                    return ApiResults.BadRequest($"the body had {received} bytes, the Content-Length said {length}");
                }

                if (scope.IsAgent && !string.Equals(Convert.ToHexStringLower(hash), name, StringComparison.Ordinal))
                {
                    return ApiResults.BadRequest($"the bytes sent do not match their name {folder}/{name[..8]}…: a client writes only files named by their SHA-256", "send the file again");
                }

                await store.PutFileAsync(handle, temp, ct).ConfigureAwait(false);
                stored = true;
                if (handle.Kind == FileKind.Snapshot && scope.ClientId is { } client)
                {
                    // Retention deletes a snapshot only for the client that uploaded it (a job's report is not proof).
                    await db.ExecuteAsync(
                        db.Dialect == SqlDialect.Sqlite
                            ? "INSERT OR IGNORE INTO snapshot_uploads (tenant_id, name, client_id, uploaded) VALUES (@tenant, @name, @client, @now)"
                            : "INSERT INTO snapshot_uploads (tenant_id, name, client_id, uploaded) VALUES (@tenant, @name, @client, @now) ON CONFLICT DO NOTHING",
                        new { tenant = scope.TenantId, name, client, now = Clock.Format(DateTimeOffset.UtcNow) }, CancellationToken.None).ConfigureAwait(false);
                }

                return Results.Created();
            }
            finally
            {
                if (!stored && charged)
                {
                    await TenantUsage.RefundAsync(db, scope.TenantId, length).ConfigureAwait(false);
                }

                File.Delete(temp);
            }
        }).ConfigureAwait(false);
    }

    /// <summary>Copies the request body into <paramref name="path"/>, hashing it; reads at most one byte past <paramref name="expected"/>.</summary>
    private static async Task<(long Received, byte[] Hash)> ReceiveAsync(Stream body, string path, long expected, CancellationToken ct)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = BufferPool.Large.Rent(256 * 1024);
        long received = 0;
        try
        {
            await using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.Asynchronous);
            int n;
            while (received <= expected && (n = await body.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
            {
                sha.AppendData(buffer, 0, n);
                await file.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                received += n;
            }
        }
        catch (IOException e) when (e is not EndOfStreamException && !ct.IsCancellationRequested && StoreErrors.Classify(e) == StoreErrorKind.NoSpace)
        {
            throw new StoreException(StoreErrorKind.NoSpace, $"the server's upload folder is full: {e.Message}", e);
        }
        finally
        {
            BufferPool.Large.Return(buffer);
        }

        return (received, sha.GetHashAndReset());
    }

    private static async Task<IResult> DeleteAsync(HttpContext context, string folder, string name, ManagementDb db, TenantRepositories repositories, Audit audit)
    {
        var (scope, refusal) = await ScopeAsync(context, db, write: true).ConfigureAwait(false);
        if (scope is null)
        {
            return refusal!;
        }

        if (!TryHandle(folder, name, out var handle))
        {
            return NoSuchFile(folder, name);
        }

        if (scope.IsAgent && handle.Kind != FileKind.Lock)
        {
            return ApiResults.Forbidden("the repository is append-only for clients: they remove nothing but their own locks; the server's maintenance deletes");
        }

        var store = repositories.For(scope.TenantId);
        var ct = context.RequestAborted;
        return await GuardAsync(context, async () =>
        {
            if (await store.StatAsync(handle, ct).ConfigureAwait(false) is not { } info)
            {
                return NoSuchFile(folder, name);
            }

            if (handle.Kind == FileKind.Pack)
            {
                // First out of the catalog, so no writer skips a blob of a pack that is about to go.
                await TenantUsage.RemovePackAsync(db, scope.TenantId, name, ct).ConfigureAwait(false);
            }

            await store.DeleteAsync(handle, ct).ConfigureAwait(false);
            if (handle.Kind != FileKind.Lock)
            {
                await TenantUsage.RefundAsync(db, scope.TenantId, info.Size).ConfigureAwait(false);
            }

            if (handle.Kind is FileKind.Key or FileKind.Config or FileKind.Snapshot)
            {
                await audit.WriteAsync(scope.Actor, scope.TenantId, "repository.delete", $"{folder}/{name}", ct).ConfigureAwait(false);
            }

            return Results.NoContent();
        }).ConfigureAwait(false);
    }

    private static async Task<IResult> KnownAsync(HttpContext context, CatalogQuery query, ManagementDb db)
    {
        var (scope, refusal) = await ScopeAsync(context, db, write: false).ConfigureAwait(false);
        if (scope is null)
        {
            return refusal!;
        }

        var ids = query.Ids ?? [];
        if (ids.Count > HttpStore.CatalogBatch)
        {
            return ApiResults.BadRequest($"at most {HttpStore.CatalogBatch} ids per question; this one has {ids.Count}");
        }

        if (ids.FirstOrDefault(id => !IsHexId(id)) is { } bad)
        {
            return ApiResults.BadRequest($"'{Truncate(bad)}' is not a blob id (64 lowercase hex digits)");
        }

        var known = new List<string>();
        // PostgreSQL takes the whole batch as one array parameter; SQLite gets a list of parameters (at most 32,766).
        string sql = db.Dialect == SqlDialect.PostgreSql
            ? "SELECT blob_id FROM chunk_catalog WHERE tenant_id = @tenant AND blob_id = ANY(@batch)"
            : "SELECT blob_id FROM chunk_catalog WHERE tenant_id = @tenant AND blob_id IN @batch";
        foreach (var batch in ids.Distinct(StringComparer.Ordinal).Chunk(db.Dialect == SqlDialect.PostgreSql ? HttpStore.CatalogBatch : 1000))
        {
            known.AddRange(await db.QueryAsync<string>(sql, new { tenant = scope.TenantId, batch }, context.RequestAborted).ConfigureAwait(false));
        }

        return ApiResults.Ok(new CatalogAnswer(known));
    }

    private static async Task<IResult> RegisterAsync(HttpContext context, CatalogRegistration registration, ManagementDb db, TenantRepositories repositories)
    {
        var (scope, refusal) = await ScopeAsync(context, db, write: true).ConfigureAwait(false);
        if (scope is null)
        {
            return refusal!;
        }

        var packs = registration.Packs ?? [];
        int total = packs.Sum(p => p.Blobs?.Count ?? 0);
        if (total > 2 * HttpStore.CatalogBatch)
        {
            return ApiResults.BadRequest($"at most {2 * HttpStore.CatalogBatch} blob ids per registration; this one has {total}");
        }

        if (packs.FirstOrDefault(p => !IsHexId(p.Pack) || (p.Blobs ?? []).Any(b => !IsHexId(b))) is { } bad)
        {
            return ApiResults.BadRequest($"pack '{Truncate(bad.Pack)}' or one of its blob ids is not a 64-digit lowercase hex id");
        }

        var store = repositories.For(scope.TenantId);
        var ct = context.RequestAborted;
        return await GuardAsync(context, async () =>
        {
            // Only packs the repository holds: a blob named here must be readable by whoever skips it.
            var held = new List<CatalogPackInfo>();
            foreach (var pack in packs)
            {
                if (await store.StatAsync(new StoreHandle(FileKind.Pack, pack.Pack), ct).ConfigureAwait(false) is not null)
                {
                    held.Add(pack);
                }
            }

            var rows = held.SelectMany(p => (p.Blobs ?? []).Select(b => (Blob: b, p.Pack))).ToList();
            await db.InTransactionAsync(async (c, tx) =>
            {
                foreach (var batch in rows.Chunk(300))
                {
                    var args = new DynamicParameters();
                    args.Add("tenant", scope.TenantId);
                    var values = new System.Text.StringBuilder();
                    for (int i = 0; i < batch.Length; i++)
                    {
                        values.Append(i == 0 ? "" : ", ").Append($"(@tenant, @b{i}, @p{i})");
                        args.Add($"b{i}", batch[i].Blob);
                        args.Add($"p{i}", batch[i].Pack);
                    }

                    await c.ExecuteAsync($"INSERT INTO chunk_catalog (tenant_id, blob_id, pack_id) VALUES {values} ON CONFLICT DO NOTHING", args, tx).ConfigureAwait(false);
                }

                return 0;
            }, ct).ConfigureAwait(false);
            return ApiResults.Ok(new CatalogRegistered(held.Count, rows.Count, packs.Count - held.Count));
        }).ConfigureAwait(false);
    }

    private static async Task<IResult> SetQuotaAsync(HttpContext context, string tenant, SetQuotaRequest request, ManagementDb db, Audit audit, TenantRepositories repositories)
    {
        var admin = context.Admin();
        if (!admin.CanRead(tenant))
        {
            return ApiResults.NotFound($"tenant {tenant}");
        }

        if (!admin.IsProvider)
        {
            return ApiResults.Forbidden("only the provider's administrators set quotas");
        }

        if (request.QuotaBytes is < 0)
        {
            return ApiResults.BadRequest("a quota is a number of bytes, 0 or more (or null for none)");
        }

        int n = await db.ExecuteAsync("UPDATE tenants SET quota_bytes = @quota WHERE id = @tenant", new { quota = request.QuotaBytes, tenant }, context.RequestAborted).ConfigureAwait(false);
        if (n == 0)
        {
            return ApiResults.NotFound($"tenant {tenant}");
        }

        await audit.WriteAsync($"admin:{admin.Name}", tenant, "tenant.quota", request.QuotaBytes is { } q ? $"quota set to {q} bytes" : "quota removed", context.RequestAborted).ConfigureAwait(false);
        return await GuardAsync(context, async () => ApiResults.Ok(await RepositoryInfoAsync(context, tenant).ConfigureAwait(false))).ConfigureAwait(false);
    }

    private static Task<UsageRow?> UsageAsync(ManagementDb db, string tenant, CancellationToken ct) =>
        db.QuerySingleOrDefaultAsync<UsageRow>("SELECT usage_bytes AS UsageBytes, quota_bytes AS QuotaBytes, last_maintenance AS LastMaintenance FROM tenants WHERE id = @tenant", new { tenant }, ct);

    /// <summary>Bytes stored, the quota, whether the repository was initialised (it has a config), the server's key and maintenance.</summary>
    private static async Task<RepositoryInfo> RepositoryInfoAsync(HttpContext context, string tenant)
    {
        var services = context.RequestServices;
        var usage = await UsageAsync(services.GetRequiredService<ManagementDb>(), tenant, context.RequestAborted).ConfigureAwait(false);
        bool initialized = await services.GetRequiredService<TenantRepositories>().For(tenant).StatAsync(StoreHandle.Config, context.RequestAborted).ConfigureAwait(false) is not null;
        return new RepositoryInfo(tenant, initialized, usage?.UsageBytes ?? 0, usage?.QuotaBytes, services.GetRequiredService<ServerKeys>().Has(tenant), Clock.ParseOrNull(usage?.LastMaintenance));
    }

    /// <summary>
    /// Gives the server a key to the tenant's repository (docs/key-model.md): the key file must exist and the secret must
    /// open it, checked by opening the repository with it before anything is kept.
    /// </summary>
    private static async Task<IResult> SetServerKeyAsync(HttpContext context, string tenant, ServerKeyRequest request, ManagementDb db, TenantRepositories repositories, ServerKeys keys, Audit audit)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        if (!IsHexId(request.KeyId) || string.IsNullOrEmpty(request.Secret))
        {
            return ApiResults.BadRequest("give the id of a key file of the repository (64 hex digits) and the secret that opens it");
        }

        return await GuardAsync(context, async () =>
        {
            var store = repositories.For(tenant);
            if (await store.StatAsync(new StoreHandle(FileKind.Key, request.KeyId), context.RequestAborted).ConfigureAwait(false) is null)
            {
                return ApiResults.BadRequest($"the repository has no key file {request.KeyId[..8]}…", "add it first (haven admin repository --server-key does both)");
            }

            try
            {
                await using var repo = await Haven.Repository.Repository.OpenAsync(store, request.Secret, null, context.RequestAborted).ConfigureAwait(false);
            }
            catch (HavenException e) when (e.Code is ErrorCode.WrongPassword or ErrorCode.Corrupt or ErrorCode.UnsupportedFormat or ErrorCode.NotFound)
            {
                // The engine's message names the store's location on the server, which is not the tenant's business.
                return ApiResults.BadRequest(e.Code == ErrorCode.WrongPassword ? "the secret opens none of the repository's key files" : "the repository's config or key files cannot be read", "run haven check -r haven:https://SERVER/TENANT");
            }

            keys.Set(tenant, request);
            await audit.WriteAsync($"admin:{context.Admin().Name}", tenant, "repository.server-key", $"the server was given key {request.KeyId[..8]}… (it may now prune)", context.RequestAborted).ConfigureAwait(false);
            return Results.NoContent();
        }).ConfigureAwait(false);
    }

    /// <summary>Withdraws the server's key: the secret is forgotten and its key file deleted from the repository.</summary>
    private static async Task<IResult> RemoveServerKeyAsync(HttpContext context, string tenant, ManagementDb db, TenantRepositories repositories, ServerKeys keys, Audit audit)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        if (keys.Get(tenant) is not { } key)
        {
            return ApiResults.NotFound("the server's key to this repository");
        }

        return await GuardAsync(context, async () =>
        {
            await new MaintenanceStore(repositories.For(tenant), db, tenant).DeleteAsync(new StoreHandle(FileKind.Key, key.KeyId), context.RequestAborted).ConfigureAwait(false);
            keys.Remove(tenant);
            await audit.WriteAsync($"admin:{context.Admin().Name}", tenant, "repository.server-key", $"the server's key {key.KeyId[..8]}… was withdrawn and its key file deleted", context.RequestAborted).ConfigureAwait(false);
            return Results.NoContent();
        }).ConfigureAwait(false);
    }

    /// <summary>Runs the tenant's maintenance now (retention, then a prune when the server holds a key) and answers what it did.</summary>
    private static async Task<IResult> MaintainAsync(HttpContext context, string tenant, ManagementDb db, TenantRepositories repositories, RepositoryMaintenance maintenance)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true).ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        return await GuardAsync(context, async () =>
        {
            try
            {
                return ApiResults.Ok(await maintenance.RunAsync(tenant, $"admin:{context.Admin().Name}", context.RequestAborted).ConfigureAwait(false));
            }
            catch (HavenException e)
            {
                // A damaged repository stops prune before it deletes anything; the administrator learns why.
                // Messages name the store by its place on the server, which is not the tenant's business.
                string message = e.Message.Replace(repositories.For(tenant).Location, "the repository", StringComparison.Ordinal);
                return ApiResults.Error(StatusCodes.Status500InternalServerError, "maintenance_failed", $"the maintenance of the repository failed: {message}", e.Hint);
            }
        }).ConfigureAwait(false);
    }

    private static bool IsHexId(string? s) => s is { Length: 64 } && s.All(char.IsAsciiHexDigitLower);

    private static string Truncate(string? s) => s is null ? "" : s.Length <= 70 ? s : s[..70] + "…";

    private sealed record UsageRow(long UsageBytes, long? QuotaBytes, string? LastMaintenance);
}
